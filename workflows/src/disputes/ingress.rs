//! Webhook ingress: a signed event in, stored raw in the inbox before anything answers
//! 2xx, then its effect: `dispute.created` records the dispute and starts its run in
//! the same transaction; later events update the dispute (only when newer than the
//! last one applied) and signal the run; funds movements are recorded; an event for no
//! known dispute, or a closed one, becomes a dead letter.
//!
//! The inbox row commits with its effect, except for signals: the engine delivers
//! those on its own connection, so the row commits first with no outcome, the signal
//! follows (idempotent on the event id), and the outcome last. A crash in between
//! leaves an inbox row without outcome, which the sender's redelivery completes
//! instead of answering "duplicate".

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;
use waymark_engine::keys::Sealer;
use waymark_engine::{Engine, EngineError, SendSignal, StartRun, StoreError, Workflow};

use super::event::{Event, EventType};
use super::record;
use super::signature::{self, SignatureError};
use super::PaymentDispute;

/// What became of an accepted event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A new dispute and its run.
    Started { run_id: Uuid },
    /// Recorded and applied (signalled to the run, or a funds movement recorded).
    Applied,
    /// Recorded; older than what the dispute already reflects, so not applied.
    Stale,
    /// Filed as a dead letter for an operator.
    DeadLetter { dead_letter_id: Uuid, why: String },
    /// This event id was seen before; nothing changed.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// 401, saying no more than that.
    #[error("bad or stale signature")]
    Unauthorized(#[source] SignatureError),
    /// 400: not a valid event.
    #[error("{0}")]
    Invalid(String),
    /// 409: a replay that still finds no dispute.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The tenant's valid secrets, opened. A slug that is not a tenant's simply has none.
pub async fn secrets(
    engine: &Engine,
    sealer: &Sealer,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    if !waymark_engine::is_valid_tenant(tenant) {
        return Ok(Vec::new());
    }
    let sealed = record::secrets_valid(&engine.store, tenant, now).await?;
    Ok(sealed
        .iter()
        .filter_map(|s| {
            let opened = sealer.open_text(s.id, &s.sealed);
            if opened.is_none() {
                tracing::warn!(tenant, secret = %s.id, "a webhook secret does not open with this master key");
            }
            opened
        })
        .collect())
}

/// Verifies, parses and applies one delivery to `POST /v1/webhooks/{tenant}/disputes`.
pub async fn receive(
    engine: &Engine,
    sealer: &Sealer,
    tenant: &str,
    signature_header: Option<&str>,
    body: &[u8],
) -> Result<Outcome, IngressError> {
    let now = engine.clock.now();
    let secrets = secrets(engine, sealer, tenant, now).await?;
    signature::verify(signature_header, body, &secrets, now).map_err(|e| {
        tracing::info!(tenant, why = %e, "webhook refused");
        IngressError::Unauthorized(e)
    })?;
    let event = Event::parse(body).map_err(IngressError::Invalid)?;
    // Parsed as JSON, so UTF-8.
    let raw = String::from_utf8_lossy(body);
    apply(engine, tenant, &event, &raw, None).await
}

/// Replays dead letter `id` (of a tenant `allowed` permits) as if it arrived now.
pub async fn replay(
    engine: &Engine,
    id: Uuid,
    allowed: impl Fn(&str) -> bool,
    actor: &str,
) -> Result<Option<Outcome>, IngressError> {
    let Some(letter) = record::dead_letter(&engine.store, id).await? else {
        return Ok(None);
    };
    if !allowed(&letter.tenant) {
        return Ok(None);
    }
    if letter.replayed_at.is_some() {
        return Err(IngressError::Conflict(format!(
            "dead letter {id} was already replayed"
        )));
    }
    let event = Event::parse(letter.raw_body.as_bytes()).map_err(IngressError::Invalid)?;
    match apply(
        engine,
        &letter.tenant,
        &event,
        &letter.raw_body,
        Some(actor),
    )
    .await?
    {
        Outcome::DeadLetter { why, .. } => Err(IngressError::Conflict(format!(
            "replaying dead letter {id} changed nothing: {why}"
        ))),
        outcome => Ok(Some(outcome)),
    }
}

fn actor(event: &Event) -> String {
    format!("webhook:{}", event.id)
}

/// The effect of a verified event. `replay_by` names the operator replaying a dead
/// letter; a replay then goes past the inbox's duplicate check.
async fn apply(
    engine: &Engine,
    tenant: &str,
    event: &Event,
    raw: &str,
    replay_by: Option<&str>,
) -> Result<Outcome, IngressError> {
    let store = &engine.store;
    let now = engine.clock.now();
    let dispute_id = &event.data.dispute.id;
    let mut tx = store.begin().await?;
    let seen = record::inbox_record(&mut tx, tenant, event, raw, now).await?;
    match (&seen, replay_by) {
        (Some(Some(outcome)), None) => {
            tracing::debug!(tenant, event = %event.id, outcome, "duplicate webhook");
            return Ok(Outcome::Duplicate);
        }
        (Some(Some(outcome)), Some(_)) if outcome != "dead_letter" => {
            return Err(IngressError::Conflict(format!(
                "event {} was already {outcome}",
                event.id
            )))
        }
        _ => {}
    }
    let dispute = record::get_locked(&mut tx, tenant, dispute_id).await?;
    let result = match (event.kind, dispute) {
        (EventType::Created, None) => {
            record::insert(&mut tx, tenant, event, now).await?;
            let started = engine
                .start_in(
                    &mut tx,
                    StartRun {
                        tenant: tenant.to_owned(),
                        workflow: PaymentDispute::NAME.into(),
                        input: json!({ "dispute_id": dispute_id }),
                        idempotency_key: Some(format!("dispute:{dispute_id}")),
                        tags: vec![format!("dispute:{dispute_id}")],
                        actor: actor(event),
                    },
                )
                .await?;
            record::attach_run(&mut tx, tenant, dispute_id, started.run.id).await?;
            record::timeline_in(
                &mut tx,
                tenant,
                dispute_id,
                &actor(event),
                "opened",
                json!({"run_id": started.run.id, "amount": event.data.dispute.amount,
                       "currency": event.data.dispute.currency}),
                now,
            )
            .await?;
            record::inbox_outcome_in(&mut tx, tenant, &event.id, "started", now).await?;
            Outcome::Started {
                run_id: started.run.id,
            }
        }
        (EventType::Created, Some(_)) => {
            // The dispute exists (another event created it): nothing moves.
            record::inbox_outcome_in(&mut tx, tenant, &event.id, "stale", now).await?;
            Outcome::Stale
        }
        (_, None) => dead_letter(&mut tx, tenant, event, raw, "no such dispute", now).await?,
        (_, Some(d)) if d.status == "closed" => {
            dead_letter(&mut tx, tenant, event, raw, "the dispute is closed", now).await?
        }
        (EventType::FundsWithdrawn | EventType::FundsReinstated, Some(_)) => {
            let kind = if event.kind == EventType::FundsWithdrawn {
                "withdrawn"
            } else {
                "reinstated"
            };
            record::funds_in(&mut tx, tenant, event, kind).await?;
            record::timeline_in(
                &mut tx,
                tenant,
                dispute_id,
                &actor(event),
                &format!("funds_{kind}"),
                json!({"amount": event.data.dispute.amount}),
                now,
            )
            .await?;
            record::inbox_outcome_in(&mut tx, tenant, &event.id, "applied", now).await?;
            Outcome::Applied
        }
        (EventType::Updated | EventType::Closed, Some(d)) => {
            let redelivery = d.last_event_id == event.id;
            if !redelivery && event.created <= d.last_event_at {
                record::timeline_in(
                    &mut tx,
                    tenant,
                    dispute_id,
                    &actor(event),
                    "stale_event_recorded",
                    json!({"type": event.kind.as_str(), "created": event.created,
                           "newest_applied": d.last_event_at}),
                    now,
                )
                .await?;
                record::inbox_outcome_in(&mut tx, tenant, &event.id, "stale", now).await?;
                Outcome::Stale
            } else {
                if !redelivery {
                    record::apply_event(&mut tx, tenant, event, now).await?;
                    record::timeline_in(
                        &mut tx,
                        tenant,
                        dispute_id,
                        &actor(event),
                        event.kind.as_str(),
                        json!({"status": event.data.dispute.status}),
                        now,
                    )
                    .await?;
                }
                if let Some(by) = replay_by {
                    record::dead_letter_replayed_in(&mut tx, tenant, &event.id, by, now).await?;
                }
                tx.commit().await?;
                let run_id = d.run_id.ok_or_else(|| {
                    StoreError::Corrupt(format!("dispute {dispute_id} has no run"))
                })?;
                let name = if event.kind == EventType::Closed {
                    "network_closed"
                } else {
                    "network_update"
                };
                engine
                    .signal(
                        &waymark_engine::TenantScope::Tenant(tenant.to_owned()),
                        SendSignal {
                            run_id,
                            name: name.into(),
                            payload: json!({ "event_id": event.id }),
                            idempotency_key: Some(format!("webhook:{}", event.id)),
                            actor: actor(event),
                        },
                    )
                    .await?;
                record::inbox_outcome(store, tenant, &event.id, "applied", now).await?;
                return Ok(Outcome::Applied);
            }
        }
    };
    if let (Some(by), false) = (replay_by, matches!(result, Outcome::DeadLetter { .. })) {
        record::dead_letter_replayed_in(&mut tx, tenant, &event.id, by, now).await?;
    }
    if replay_by.is_some() && matches!(result, Outcome::DeadLetter { .. }) {
        // Nothing changed: leave the dead letter as it was.
        return Ok(result);
    }
    tx.commit().await?;
    Ok(result)
}

async fn dead_letter(
    tx: &mut waymark_engine::store::Tx,
    tenant: &str,
    event: &Event,
    raw: &str,
    why: &str,
    now: DateTime<Utc>,
) -> Result<Outcome, IngressError> {
    let id = record::dead_letter_in(tx, tenant, event, raw, why, now).await?;
    record::inbox_outcome_in(tx, tenant, &event.id, "dead_letter", now).await?;
    tracing::warn!(tenant, event = %event.id, dispute = %event.data.dispute.id, why, "webhook filed as a dead letter");
    Ok(Outcome::DeadLetter {
        dead_letter_id: id,
        why: why.to_owned(),
    })
}
