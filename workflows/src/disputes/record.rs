//! The dispute records and all of their SQL, one text per statement for both backends
//! (see `waymark_engine::store::sql`): disputes, the webhook inbox, dead letters,
//! signing secrets, per-tenant settings, funds movements and the timeline.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::store::{Arg, Row, Tx};
use waymark_engine::{Store, StoreError};

use super::event::{DisputeData, Event};
use super::money::{Currency, Money};

type Result<T> = std::result::Result<T, StoreError>;

/// A dispute as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dispute {
    pub tenant: String,
    pub dispute_id: String,
    pub charge: String,
    pub amount: i64,
    pub currency: String,
    pub reason: String,
    pub network_status: String,
    /// Where the dispute is in its workflow (`opened` … `closed`).
    pub status: String,
    pub evidence_due_by: DateTime<Utc>,
    pub cycle: i64,
    pub merchant_email: String,
    pub merchant_name: Option<String>,
    pub run_id: Option<Uuid>,
    pub outcome_reason: Option<String>,
    pub last_event_id: String,
    pub last_event_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Dispute {
    /// The amount for people (`USD 42.00`); the bare code when the stored currency is
    /// not one this binary knows.
    pub fn formatted_amount(&self) -> String {
        match Currency::parse(&self.currency) {
            Some(currency) => Money::new(self.amount, currency).format(),
            None => format!("{} {}", self.currency, self.amount),
        }
    }

    fn from_row(row: &Row) -> Result<Dispute> {
        Ok(Dispute {
            tenant: row.text("tenant")?,
            dispute_id: row.text("dispute_id")?,
            charge: row.text("charge")?,
            amount: row.int("amount")?,
            currency: row.text("currency")?,
            reason: row.text("reason")?,
            network_status: row.text("network_status")?,
            status: row.text("status")?,
            evidence_due_by: row.time("evidence_due_by")?,
            cycle: row.int("cycle")?,
            merchant_email: row.text("merchant_email")?,
            merchant_name: row.opt_text("merchant_name")?,
            run_id: row.opt_id("run_id")?,
            outcome_reason: row.opt_text("outcome_reason")?,
            last_event_id: row.text("last_event_id")?,
            last_event_at: row.time("last_event_at")?,
            created_at: row.time("created_at")?,
            updated_at: row.time("updated_at")?,
        })
    }
}

const COLUMNS: &str = "tenant, dispute_id, charge, amount, currency, reason, network_status, \
    status, evidence_due_by, cycle, merchant_email, merchant_name, run_id, outcome_reason, \
    last_event_id, last_event_at, created_at, updated_at";

pub async fn get(store: &Store, tenant: &str, id: &str) -> Result<Option<Dispute>> {
    let sql = format!("SELECT {COLUMNS} FROM disputes WHERE tenant = $1 AND dispute_id = $2");
    let rows = store
        .sql_fetch(&sql, &[Arg::text(tenant), Arg::text(id)])
        .await?;
    rows.first().map(Dispute::from_row).transpose()
}

/// The dispute, locked for the rest of the caller's transaction.
pub async fn get_locked(tx: &mut Tx, tenant: &str, id: &str) -> Result<Option<Dispute>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM disputes WHERE tenant = $1 AND dispute_id = $2 {}",
        tx.for_update()
    );
    let rows = tx.fetch(&sql, &[Arg::text(tenant), Arg::text(id)]).await?;
    rows.first().map(Dispute::from_row).transpose()
}

/// Inserts the dispute a `dispute.created` event describes; false when it exists.
pub async fn insert(tx: &mut Tx, tenant: &str, event: &Event, now: DateTime<Utc>) -> Result<bool> {
    let d: &DisputeData = &event.data.dispute;
    let inserted = tx
        .execute(
            "INSERT INTO disputes (tenant, dispute_id, charge, amount, currency, reason, \
             network_status, status, evidence_due_by, cycle, merchant_email, merchant_name, \
             last_event_id, last_event_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'opened', $8, 1, $9, $10, $11, $12, $13, $13) \
             ON CONFLICT (tenant, dispute_id) DO NOTHING",
            &[
                Arg::text(tenant),
                Arg::text(&d.id),
                Arg::text(&d.charge),
                Arg::int(d.amount as i64),
                Arg::text(d.currency.code()),
                Arg::text(&d.reason),
                Arg::text(d.status.as_str()),
                Arg::time(d.evidence_due_by),
                Arg::text(&d.merchant.email),
                Arg::Text(d.merchant.name.clone()),
                Arg::text(&event.id),
                Arg::time(event.created),
                Arg::time(now),
            ],
        )
        .await?;
    Ok(inserted == 1)
}

pub async fn attach_run(tx: &mut Tx, tenant: &str, id: &str, run: Uuid) -> Result<()> {
    tx.execute(
        "UPDATE disputes SET run_id = $3 WHERE tenant = $1 AND dispute_id = $2",
        &[Arg::text(tenant), Arg::text(id), Arg::id(run)],
    )
    .await?;
    Ok(())
}

/// Applies what a newer `dispute.updated` or `dispute.closed` says. In the appeal
/// cycle the evidence deadline is Waymark's own (set when the appeal began), so an
/// event, which carries the network's first-cycle date, does not move it.
pub async fn apply_event(
    tx: &mut Tx,
    tenant: &str,
    event: &Event,
    now: DateTime<Utc>,
) -> Result<()> {
    let d = &event.data.dispute;
    tx.execute(
        "UPDATE disputes SET network_status = $3, \
         evidence_due_by = CASE WHEN cycle = 1 THEN $4 ELSE evidence_due_by END, \
         last_event_id = $5, last_event_at = $6, updated_at = $7 \
         WHERE tenant = $1 AND dispute_id = $2",
        &[
            Arg::text(tenant),
            Arg::text(&d.id),
            Arg::text(d.status.as_str()),
            Arg::time(d.evidence_due_by),
            Arg::text(&event.id),
            Arg::time(event.created),
            Arg::time(now),
        ],
    )
    .await?;
    Ok(())
}

/// Moves the dispute to `status` (with why, for an ending).
pub async fn set_status(
    store: &Store,
    tenant: &str,
    id: &str,
    status: &str,
    reason: Option<&str>,
    now: DateTime<Utc>,
) -> Result<()> {
    store
        .sql_execute(
            "UPDATE disputes SET status = $3, outcome_reason = COALESCE($4, outcome_reason), \
             updated_at = $5 WHERE tenant = $1 AND dispute_id = $2",
            &[
                Arg::text(tenant),
                Arg::text(id),
                Arg::text(status),
                Arg::Text(reason.map(str::to_owned)),
                Arg::time(now),
            ],
        )
        .await?;
    Ok(())
}

/// Starts the second cycle (the appeal): a new evidence deadline, and the network's
/// status back to `needs_response`, since the appeal awaits a response rather than
/// staying `lost`. Events created before `applied_after` (the appeal's start, or a
/// newer event already applied) describe the first cycle: they are recorded but no
/// longer applied.
pub async fn start_cycle(
    store: &Store,
    tenant: &str,
    id: &str,
    cycle: i64,
    evidence_due_by: DateTime<Utc>,
    applied_after: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<()> {
    store
        .sql_execute(
            "UPDATE disputes SET cycle = $3, evidence_due_by = $4, status = 'awaiting_evidence', \
             network_status = 'needs_response', last_event_at = $6, \
             outcome_reason = NULL, updated_at = $5 WHERE tenant = $1 AND dispute_id = $2",
            &[
                Arg::text(tenant),
                Arg::text(id),
                Arg::int(cycle),
                Arg::time(evidence_due_by),
                Arg::time(now),
                Arg::time(applied_after),
            ],
        )
        .await?;
    Ok(())
}

/// Filters of `GET /v1/disputes`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// `None`: every tenant (an admin).
    pub tenant: Option<String>,
    pub status: Option<String>,
    pub due_before: Option<DateTime<Utc>>,
    pub min_amount: Option<i64>,
    pub max_amount: Option<i64>,
    /// Keyset: disputes after this (tenant, dispute id).
    pub after: Option<(String, String)>,
    pub limit: i64,
}

pub async fn list(store: &Store, filter: &ListFilter) -> Result<Vec<Dispute>> {
    let mut clauses = Vec::new();
    let mut args = Vec::new();
    let mut add = |clause: &str, arg: Arg| {
        args.push(arg);
        clauses.push(clause.replace('?', &format!("${}", args.len())));
    };
    if let Some(tenant) = &filter.tenant {
        add("tenant = ?", Arg::text(tenant));
    }
    if let Some(status) = &filter.status {
        add("status = ?", Arg::text(status));
    }
    if let Some(due) = filter.due_before {
        add("evidence_due_by < ?", Arg::time(due));
    }
    if let Some(min) = filter.min_amount {
        add("amount >= ?", Arg::int(min));
    }
    if let Some(max) = filter.max_amount {
        add("amount <= ?", Arg::int(max));
    }
    if let Some((tenant, id)) = &filter.after {
        args.push(Arg::text(tenant));
        args.push(Arg::text(id));
        let (t, d) = (args.len() - 1, args.len());
        clauses.push(format!(
            "(tenant > ${t} OR (tenant = ${t} AND dispute_id > ${d}))"
        ));
    }
    let filter_sql = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    args.push(Arg::int(filter.limit));
    let sql = format!(
        "SELECT {COLUMNS} FROM disputes {filter_sql} ORDER BY tenant, dispute_id LIMIT ${}",
        args.len()
    );
    let rows = store.sql_fetch(&sql, &args).await?;
    rows.iter().map(Dispute::from_row).collect()
}

// ---------------------------------------------------------------------------------
// The timeline and funds movements

/// Appends to the dispute's timeline; `actor` is `webhook:<event id>`, `key:<id>`,
/// `timer` or `run:<id>`.
pub async fn timeline_in(
    tx: &mut Tx,
    tenant: &str,
    id: &str,
    actor: &str,
    what: &str,
    detail: Value,
    at: DateTime<Utc>,
) -> Result<()> {
    tx.execute(
        "INSERT INTO disputes_timeline (id, tenant, dispute_id, at, actor, what, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            Arg::id(Uuid::now_v7()),
            Arg::text(tenant),
            Arg::text(id),
            Arg::time(at),
            Arg::text(actor),
            Arg::text(what),
            Arg::json(detail),
        ],
    )
    .await?;
    Ok(())
}

pub async fn timeline(
    store: &Store,
    tenant: &str,
    id: &str,
    actor: &str,
    what: &str,
    detail: Value,
    at: DateTime<Utc>,
) -> Result<()> {
    let mut tx = store.begin().await?;
    timeline_in(&mut tx, tenant, id, actor, what, detail, at).await?;
    tx.commit().await
}

pub async fn timeline_list(store: &Store, tenant: &str, id: &str) -> Result<Vec<Value>> {
    let rows = store
        .sql_fetch(
            "SELECT at, actor, what, detail FROM disputes_timeline \
             WHERE tenant = $1 AND dispute_id = $2 ORDER BY id",
            &[Arg::text(tenant), Arg::text(id)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(json!({"at": r.time("at")?, "actor": r.text("actor")?,
                      "what": r.text("what")?, "detail": r.json("detail")?}))
        })
        .collect()
}

pub async fn funds_in(tx: &mut Tx, tenant: &str, event: &Event, kind: &str) -> Result<()> {
    let d = &event.data.dispute;
    tx.execute(
        "INSERT INTO disputes_funds (tenant, event_id, dispute_id, kind, amount, currency, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant, event_id) DO NOTHING",
        &[
            Arg::text(tenant),
            Arg::text(&event.id),
            Arg::text(&d.id),
            Arg::text(kind),
            Arg::int(d.amount as i64),
            Arg::text(d.currency.code()),
            Arg::time(event.created),
        ],
    )
    .await?;
    Ok(())
}

pub async fn funds_list(store: &Store, tenant: &str, id: &str) -> Result<Vec<Value>> {
    let rows = store
        .sql_fetch(
            "SELECT event_id, kind, amount, currency, at FROM disputes_funds \
             WHERE tenant = $1 AND dispute_id = $2 ORDER BY at, event_id",
            &[Arg::text(tenant), Arg::text(id)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let (amount, currency) = (r.int("amount")?, r.text("currency")?);
            let formatted = Currency::parse(&currency)
                .map(|c| Money::new(amount, c).format())
                .unwrap_or_else(|| format!("{currency} {amount}"));
            Ok(
                json!({"event_id": r.text("event_id")?, "kind": r.text("kind")?,
                      "amount": amount, "currency": currency, "formatted": formatted,
                      "at": r.time("at")?}),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The webhook inbox and dead letters

/// An event's row in the inbox: `None` when it is new (and now recorded), else the
/// outcome it was given (`None` inside: recorded, its effect not yet committed).
pub async fn inbox_record(
    tx: &mut Tx,
    tenant: &str,
    event: &Event,
    raw: &str,
    now: DateTime<Utc>,
) -> Result<Option<Option<String>>> {
    let inserted = tx
        .execute(
            "INSERT INTO disputes_webhook_inbox (tenant, event_id, event_type, dispute_id, \
             event_created, raw_body, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (tenant, event_id) DO NOTHING",
            &[
                Arg::text(tenant),
                Arg::text(&event.id),
                Arg::text(event.kind.as_str()),
                Arg::text(&event.data.dispute.id),
                Arg::time(event.created),
                Arg::text(raw),
                Arg::time(now),
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(None);
    }
    let rows = tx
        .fetch(
            &format!(
                "SELECT outcome FROM disputes_webhook_inbox WHERE tenant = $1 AND event_id = $2 {}",
                tx.for_update()
            ),
            &[Arg::text(tenant), Arg::text(&event.id)],
        )
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Corrupt("inbox row vanished".into()))?;
    Ok(Some(row.opt_text("outcome")?))
}

pub async fn inbox_outcome_in(
    tx: &mut Tx,
    tenant: &str,
    event_id: &str,
    outcome: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    tx.execute(
        "UPDATE disputes_webhook_inbox SET outcome = $3, processed_at = $4 \
         WHERE tenant = $1 AND event_id = $2",
        &[
            Arg::text(tenant),
            Arg::text(event_id),
            Arg::text(outcome),
            Arg::time(now),
        ],
    )
    .await?;
    Ok(())
}

pub async fn inbox_outcome(
    store: &Store,
    tenant: &str,
    event_id: &str,
    outcome: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let mut tx = store.begin().await?;
    inbox_outcome_in(&mut tx, tenant, event_id, outcome, now).await?;
    tx.commit().await
}

/// A dead letter as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub id: Uuid,
    pub tenant: String,
    pub event_id: String,
    pub event_type: String,
    pub dispute_id: String,
    pub why: String,
    #[serde(skip)]
    pub raw_body: String,
    pub received_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub replayed_by: Option<String>,
}

impl DeadLetter {
    fn from_row(r: &Row) -> Result<DeadLetter> {
        Ok(DeadLetter {
            id: r.id("id")?,
            tenant: r.text("tenant")?,
            event_id: r.text("event_id")?,
            event_type: r.text("event_type")?,
            dispute_id: r.text("dispute_id")?,
            why: r.text("why")?,
            raw_body: r.text("raw_body")?,
            received_at: r.time("received_at")?,
            replayed_at: r.opt_time("replayed_at")?,
            replayed_by: r.opt_text("replayed_by")?,
        })
    }
}

const DEAD_COLUMNS: &str = "id, tenant, event_id, event_type, dispute_id, why, raw_body, \
    received_at, replayed_at, replayed_by";

/// Files the event as a dead letter (once per event id); its id.
pub async fn dead_letter_in(
    tx: &mut Tx,
    tenant: &str,
    event: &Event,
    raw: &str,
    why: &str,
    now: DateTime<Utc>,
) -> Result<Uuid> {
    tx.execute(
        "INSERT INTO disputes_dead_letters (id, tenant, event_id, event_type, dispute_id, why, \
         raw_body, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (tenant, event_id) DO UPDATE SET why = $6, replayed_at = NULL, replayed_by = NULL",
        &[
            Arg::id(Uuid::now_v7()),
            Arg::text(tenant),
            Arg::text(&event.id),
            Arg::text(event.kind.as_str()),
            Arg::text(&event.data.dispute.id),
            Arg::text(why),
            Arg::text(raw),
            Arg::time(now),
        ],
    )
    .await?;
    let rows = tx
        .fetch(
            "SELECT id FROM disputes_dead_letters WHERE tenant = $1 AND event_id = $2",
            &[Arg::text(tenant), Arg::text(&event.id)],
        )
        .await?;
    rows.first()
        .ok_or_else(|| StoreError::Corrupt("dead letter vanished".into()))?
        .id("id")
}

/// Dead letters not yet replayed, oldest first, of one tenant or (`None`) all.
pub async fn dead_letters(
    store: &Store,
    tenant: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DeadLetter>> {
    let sql = format!(
        "SELECT {DEAD_COLUMNS} FROM disputes_dead_letters WHERE replayed_at IS NULL \
         AND ($1 IS NULL OR tenant = $1) AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
    );
    let rows = store
        .sql_fetch(
            &sql,
            &[
                Arg::Text(tenant.map(str::to_owned)),
                Arg::Id(after),
                Arg::int(limit),
            ],
        )
        .await?;
    rows.iter().map(DeadLetter::from_row).collect()
}

pub async fn dead_letter(store: &Store, id: Uuid) -> Result<Option<DeadLetter>> {
    let sql = format!("SELECT {DEAD_COLUMNS} FROM disputes_dead_letters WHERE id = $1");
    let rows = store.sql_fetch(&sql, &[Arg::id(id)]).await?;
    rows.first().map(DeadLetter::from_row).transpose()
}

pub async fn dead_letter_replayed_in(
    tx: &mut Tx,
    tenant: &str,
    event_id: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    tx.execute(
        "UPDATE disputes_dead_letters SET replayed_at = $3, replayed_by = $4 \
         WHERE tenant = $1 AND event_id = $2",
        &[
            Arg::text(tenant),
            Arg::text(event_id),
            Arg::time(now),
            Arg::text(by),
        ],
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// Signing secrets and settings

/// A stored signing secret, still sealed.
#[derive(Debug, Clone)]
pub struct SealedSecret {
    pub id: Uuid,
    pub sealed: String,
}

/// The tenant's secrets valid at `now`: the current one and any rolled one in its grace.
pub async fn secrets_valid(
    store: &Store,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<Vec<SealedSecret>> {
    let rows = store
        .sql_fetch(
            "SELECT id, sealed FROM disputes_webhook_secrets WHERE tenant = $1 \
             AND (expires_at IS NULL OR expires_at > $2) ORDER BY id",
            &[Arg::text(tenant), Arg::time(now)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(SealedSecret {
                id: r.id("id")?,
                sealed: r.text("sealed")?,
            })
        })
        .collect()
}

/// Makes `new` the tenant's current secret; the one current until now stays valid
/// until `previous_until` (older rolled ones keep their own end, never extended).
/// Answers whether there was one to roll.
pub async fn secret_roll(
    tx: &mut Tx,
    tenant: &str,
    new_id: Uuid,
    sealed: &str,
    master_key_id: &str,
    previous_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool> {
    // Serialises two rolls of one tenant: each sees the other's secret as current.
    tx.execute(
        "INSERT INTO disputes_settings (tenant, updated_at) VALUES ($1, $2) \
         ON CONFLICT (tenant) DO UPDATE SET updated_at = $2",
        &[Arg::text(tenant), Arg::time(now)],
    )
    .await?;
    let rolled = tx
        .execute(
            "UPDATE disputes_webhook_secrets SET expires_at = $2 \
             WHERE tenant = $1 AND expires_at IS NULL",
            &[Arg::text(tenant), Arg::time(previous_until)],
        )
        .await?;
    tx.execute(
        "INSERT INTO disputes_webhook_secrets (id, tenant, sealed, master_key_id, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            Arg::id(new_id),
            Arg::text(tenant),
            Arg::text(sealed),
            Arg::text(master_key_id),
            Arg::time(now),
        ],
    )
    .await?;
    Ok(rolled > 0)
}

/// A tenant's dispute settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// The internal evidence deadline is this long before the network's.
    pub safety_margin: std::time::Duration,
    /// Per currency code: disputes of at least this many minor units wait for review.
    pub approval_thresholds: serde_json::Map<String, Value>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            safety_margin: std::time::Duration::from_secs(24 * 3600),
            approval_thresholds: serde_json::Map::new(),
        }
    }
}

impl Settings {
    /// Whether a dispute of `amount` minor units of `currency` needs an operator.
    pub fn needs_review(&self, amount: i64, currency: &str) -> bool {
        self.approval_thresholds
            .get(currency)
            .and_then(Value::as_i64)
            .is_some_and(|threshold| amount >= threshold)
    }
}

pub async fn settings(store: &Store, tenant: &str) -> Result<Settings> {
    let rows = store
        .sql_fetch(
            "SELECT safety_margin_seconds, approval_thresholds FROM disputes_settings \
             WHERE tenant = $1",
            &[Arg::text(tenant)],
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok(Settings::default());
    };
    Ok(Settings {
        safety_margin: std::time::Duration::from_secs(
            row.int("safety_margin_seconds")?.max(0) as u64
        ),
        approval_thresholds: match row.json("approval_thresholds")? {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        },
    })
}

pub async fn settings_put(
    store: &Store,
    tenant: &str,
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<()> {
    store
        .sql_execute(
            "INSERT INTO disputes_settings (tenant, safety_margin_seconds, approval_thresholds, \
             updated_at) VALUES ($1, $2, $3, $4) ON CONFLICT (tenant) DO UPDATE SET \
             safety_margin_seconds = $2, approval_thresholds = $3, updated_at = $4",
            &[
                Arg::text(tenant),
                Arg::int(settings.safety_margin.as_secs() as i64),
                Arg::json(Value::Object(settings.approval_thresholds.clone())),
                Arg::time(now),
            ],
        )
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------
// Evidence

/// Records the evidence of a cycle; false when that cycle already has evidence.
#[allow(clippy::too_many_arguments)]
pub async fn evidence_insert(
    tx: &mut Tx,
    tenant: &str,
    id: &str,
    cycle: i64,
    fields: Value,
    file_ids: Value,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    let inserted = tx
        .execute(
            "INSERT INTO disputes_evidence (tenant, dispute_id, cycle, fields, file_ids, \
             submitted_at, actor) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (tenant, dispute_id, cycle) DO NOTHING",
            &[
                Arg::text(tenant),
                Arg::text(id),
                Arg::int(cycle),
                Arg::json(fields),
                Arg::json(file_ids),
                Arg::time(now),
                Arg::text(actor),
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// The evidence of a cycle: its fields and file ids.
pub async fn evidence(
    store: &Store,
    tenant: &str,
    id: &str,
    cycle: i64,
) -> Result<Option<(Value, Value)>> {
    let rows = store
        .sql_fetch(
            "SELECT fields, file_ids FROM disputes_evidence \
             WHERE tenant = $1 AND dispute_id = $2 AND cycle = $3",
            &[Arg::text(tenant), Arg::text(id), Arg::int(cycle)],
        )
        .await?;
    rows.first()
        .map(|r| Ok((r.json("fields")?, r.json("file_ids")?)))
        .transpose()
}
