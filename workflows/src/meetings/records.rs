//! The meeting's rows and their SQL, once for both backends (engine's `store::sql`):
//! the meeting, its attendees and answers, the outbox of mail its run sends, feed
//! tokens, and the RSVP signing secret.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use waymark_engine::store::{Arg, Row, Store, Tx};
use waymark_engine::StoreError;

use super::ical::PartStat;
use super::schedule::MeetingSpec;

type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeetingStatus {
    Scheduled,
    Cancelled,
    Completed,
}

impl MeetingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MeetingStatus::Scheduled => "scheduled",
            MeetingStatus::Cancelled => "cancelled",
            MeetingStatus::Completed => "completed",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "scheduled" => Ok(MeetingStatus::Scheduled),
            "cancelled" => Ok(MeetingStatus::Cancelled),
            "completed" => Ok(MeetingStatus::Completed),
            other => Err(StoreError::Corrupt(format!("meeting status {other:?}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Meeting {
    pub id: Uuid,
    pub tenant: String,
    pub run_id: Option<Uuid>,
    pub uid: String,
    pub sequence: i64,
    pub status: MeetingStatus,
    pub spec: MeetingSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attendee {
    pub id: Uuid,
    pub email: String,
    pub name: Option<String>,
    pub timezone: Option<String>,
    pub partstat: PartStat,
    pub removed: bool,
    pub answered_at: Option<DateTime<Utc>>,
}

/// A message the meeting's run is to send: an invitation or update (`request`), a
/// cancellation (`cancel`), or an answer told to the organiser (`answer`).
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub id: Uuid,
    pub kind: String,
    pub attendee_id: Option<Uuid>,
    pub sequence: i64,
    pub detail: Value,
    pub created_at: DateTime<Utc>,
}

fn partstat_text(p: PartStat) -> &'static str {
    match p {
        PartStat::NeedsAction => "needs-action",
        PartStat::Accepted => "accepted",
        PartStat::Tentative => "tentative",
        PartStat::Declined => "declined",
    }
}

fn meeting_row(row: &Row) -> Result<Meeting> {
    let spec = serde_json::from_value(row.json("spec")?)
        .map_err(|e| StoreError::Corrupt(format!("meeting spec: {e}")))?;
    Ok(Meeting {
        id: row.id("id")?,
        tenant: row.text("tenant")?,
        run_id: row.opt_id("run_id")?,
        uid: row.text("uid")?,
        sequence: row.int("sequence")?,
        status: MeetingStatus::parse(&row.text("status")?)?,
        spec,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

fn attendee_row(row: &Row) -> Result<Attendee> {
    let partstat = row.text("partstat")?;
    Ok(Attendee {
        id: row.id("id")?,
        email: row.text("email")?,
        name: row.opt_text("name")?,
        timezone: row.opt_text("timezone")?,
        partstat: PartStat::parse(&partstat)
            .ok_or_else(|| StoreError::Corrupt(format!("partstat {partstat:?}")))?,
        removed: row.opt_bool("removed")?.unwrap_or(false),
        answered_at: row.opt_time("answered_at")?,
    })
}

const MEETING_COLUMNS: &str =
    "id, tenant, run_id, uid, sequence, status, spec, created_at, updated_at";
const ATTENDEE_COLUMNS: &str = "id, email, name, timezone, partstat, removed, answered_at";

/// The installation's RSVP signing secret (made by the schema's first migration).
pub async fn secret(store: &Store) -> Result<Vec<u8>> {
    let rows = store
        .sql_fetch("SELECT rsvp_key FROM meeting_secrets WHERE id = 1", &[])
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Corrupt("meeting_secrets has no row".into()))?;
    Ok(row.text("rsvp_key")?.into_bytes())
}

/// The meeting `id` of `tenant` (any tenant when `None`).
pub async fn get(store: &Store, tenant: Option<&str>, id: Uuid) -> Result<Option<Meeting>> {
    let sql = format!("SELECT {MEETING_COLUMNS} FROM meetings WHERE id = $1");
    let rows = store.sql_fetch(&sql, &[Arg::id(id)]).await?;
    rows.first()
        .map(meeting_row)
        .transpose()
        .map(|m| m.filter(|m| tenant.is_none_or(|t| t == m.tenant)))
}

/// The meeting, locked for the transaction (so changes and answers apply one at a time).
pub async fn lock(tx: &mut Tx, id: Uuid) -> Result<Option<Meeting>> {
    let sql = format!(
        "SELECT {MEETING_COLUMNS} FROM meetings WHERE id = $1 {}",
        tx.for_update()
    );
    let rows = tx.fetch(&sql, &[Arg::id(id)]).await?;
    rows.first().map(meeting_row).transpose()
}

pub async fn insert(tx: &mut Tx, meeting: &Meeting) -> Result<()> {
    let spec =
        serde_json::to_value(&meeting.spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.execute(
        "INSERT INTO meetings (id, tenant, run_id, uid, sequence, status, spec, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            Arg::id(meeting.id),
            Arg::text(&meeting.tenant),
            Arg::Id(meeting.run_id),
            Arg::text(&meeting.uid),
            Arg::int(meeting.sequence),
            Arg::text(meeting.status.as_str()),
            Arg::json(spec),
            Arg::time(meeting.created_at),
            Arg::time(meeting.updated_at),
        ],
    )
    .await?;
    Ok(())
}

/// Writes the meeting's spec, sequence, status and run back.
pub async fn update(tx: &mut Tx, meeting: &Meeting) -> Result<()> {
    let spec =
        serde_json::to_value(&meeting.spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.execute(
        "UPDATE meetings SET run_id = $2, sequence = $3, status = $4, spec = $5, updated_at = $6 \
         WHERE id = $1",
        &[
            Arg::id(meeting.id),
            Arg::Id(meeting.run_id),
            Arg::int(meeting.sequence),
            Arg::text(meeting.status.as_str()),
            Arg::json(spec),
            Arg::time(meeting.updated_at),
        ],
    )
    .await?;
    Ok(())
}

/// Points the meeting at the run that now carries it (after a continue-as-new).
pub async fn set_run(store: &Store, id: Uuid, run: Uuid) -> Result<()> {
    store
        .sql_execute(
            "UPDATE meetings SET run_id = $2 WHERE id = $1",
            &[Arg::id(id), Arg::id(run)],
        )
        .await?;
    Ok(())
}

pub async fn set_status(
    store: &Store,
    id: Uuid,
    status: MeetingStatus,
    now: DateTime<Utc>,
) -> Result<()> {
    store
        .sql_execute(
            "UPDATE meetings SET status = $2, updated_at = $3 WHERE id = $1 AND status = 'scheduled'",
            &[Arg::id(id), Arg::text(status.as_str()), Arg::time(now)],
        )
        .await?;
    Ok(())
}

pub async fn insert_attendee(tx: &mut Tx, meeting: Uuid, a: &Attendee) -> Result<()> {
    tx.execute(
        "INSERT INTO meeting_attendees (id, meeting_id, email, name, timezone, partstat, removed, answered_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            Arg::id(a.id),
            Arg::id(meeting),
            Arg::text(&a.email),
            Arg::Text(a.name.clone()),
            Arg::Text(a.timezone.clone()),
            Arg::text(partstat_text(a.partstat)),
            Arg::Bool(Some(a.removed)),
            Arg::Time(a.answered_at),
        ],
    )
    .await?;
    Ok(())
}

pub async fn set_removed(tx: &mut Tx, attendee: Uuid, removed: bool) -> Result<()> {
    tx.execute(
        "UPDATE meeting_attendees SET removed = $2 WHERE id = $1",
        &[Arg::id(attendee), Arg::Bool(Some(removed))],
    )
    .await?;
    Ok(())
}

pub async fn attendees(store: &Store, meeting: Uuid) -> Result<Vec<Attendee>> {
    let sql = format!(
        "SELECT {ATTENDEE_COLUMNS} FROM meeting_attendees WHERE meeting_id = $1 ORDER BY email"
    );
    store
        .sql_fetch(&sql, &[Arg::id(meeting)])
        .await?
        .iter()
        .map(attendee_row)
        .collect()
}

pub async fn attendees_in(tx: &mut Tx, meeting: Uuid) -> Result<Vec<Attendee>> {
    let sql = format!(
        "SELECT {ATTENDEE_COLUMNS} FROM meeting_attendees WHERE meeting_id = $1 ORDER BY email"
    );
    tx.fetch(&sql, &[Arg::id(meeting)])
        .await?
        .iter()
        .map(attendee_row)
        .collect()
}

/// Records an answer; `false` when it was already the attendee's answer (recorded once).
pub async fn answer(
    tx: &mut Tx,
    attendee: Uuid,
    partstat: PartStat,
    now: DateTime<Utc>,
) -> Result<bool> {
    let changed = tx
        .execute(
            "UPDATE meeting_attendees SET partstat = $2, answered_at = $3 \
             WHERE id = $1 AND partstat <> $2",
            &[
                Arg::id(attendee),
                Arg::text(partstat_text(partstat)),
                Arg::time(now),
            ],
        )
        .await?;
    Ok(changed > 0)
}

/// How an occurrence is named in rows: its original local start.
pub fn occurrence_key(original: chrono::NaiveDateTime) -> String {
    original.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Records an answer for one occurrence; `false` when it was already that answer.
pub async fn answer_occurrence(
    tx: &mut Tx,
    attendee: Uuid,
    original: chrono::NaiveDateTime,
    partstat: PartStat,
    now: DateTime<Utc>,
) -> Result<bool> {
    let key = occurrence_key(original);
    let same = tx
        .fetch(
            "SELECT partstat FROM meeting_occurrence_answers WHERE attendee_id = $1 AND original = $2",
            &[Arg::id(attendee), Arg::text(&key)],
        )
        .await?
        .first()
        .map(|r| r.text("partstat"))
        .transpose()?
        .is_some_and(|p| p == partstat_text(partstat));
    if same {
        return Ok(false);
    }
    tx.execute(
        "DELETE FROM meeting_occurrence_answers WHERE attendee_id = $1 AND original = $2",
        &[Arg::id(attendee), Arg::text(&key)],
    )
    .await?;
    tx.execute(
        "INSERT INTO meeting_occurrence_answers (attendee_id, original, partstat, answered_at) \
         VALUES ($1, $2, $3, $4)",
        &[
            Arg::id(attendee),
            Arg::text(&key),
            Arg::text(partstat_text(partstat)),
            Arg::time(now),
        ],
    )
    .await?;
    Ok(true)
}

/// The per-occurrence answers of a meeting's attendees: (attendee, original, answer).
pub async fn occurrence_answers(
    store: &Store,
    meeting: Uuid,
) -> Result<Vec<(Uuid, chrono::NaiveDateTime, PartStat)>> {
    store
        .sql_fetch(
            "SELECT o.attendee_id, o.original, o.partstat FROM meeting_occurrence_answers o \
             JOIN meeting_attendees a ON a.id = o.attendee_id WHERE a.meeting_id = $1",
            &[Arg::id(meeting)],
        )
        .await?
        .iter()
        .map(|row| {
            let original = row.text("original")?;
            let partstat = row.text("partstat")?;
            Ok((
                row.id("attendee_id")?,
                chrono::NaiveDateTime::parse_from_str(&original, "%Y-%m-%dT%H:%M:%S")
                    .map_err(|e| StoreError::Corrupt(format!("occurrence {original:?}: {e}")))?,
                PartStat::parse(&partstat)
                    .ok_or_else(|| StoreError::Corrupt(format!("partstat {partstat:?}")))?,
            ))
        })
        .collect()
}

/// Moves the per-occurrence answers of a meeting with its series (`shift` in local
/// time), so they name the same occurrences after the series moved.
pub async fn shift_occurrence_answers(
    tx: &mut Tx,
    meeting: Uuid,
    shift: chrono::Duration,
) -> Result<()> {
    let rows = tx
        .fetch(
            "SELECT o.attendee_id, o.original FROM meeting_occurrence_answers o \
             JOIN meeting_attendees a ON a.id = o.attendee_id WHERE a.meeting_id = $1",
            &[Arg::id(meeting)],
        )
        .await?;
    let mut moves = Vec::new();
    for row in &rows {
        let original = row.text("original")?;
        let parsed = chrono::NaiveDateTime::parse_from_str(&original, "%Y-%m-%dT%H:%M:%S")
            .map_err(|e| StoreError::Corrupt(format!("occurrence {original:?}: {e}")))?;
        moves.push((
            row.id("attendee_id")?,
            original,
            occurrence_key(parsed + shift),
        ));
    }
    // Moved one by one under a temporary name, so no two rows collide on the way.
    for (attendee, from, to) in moves.iter() {
        tx.execute(
            "UPDATE meeting_occurrence_answers SET original = $3 WHERE attendee_id = $1 AND original = $2",
            &[Arg::id(*attendee), Arg::text(from), Arg::text(format!("moving:{to}"))],
        )
        .await?;
    }
    for (attendee, _, to) in moves.iter() {
        tx.execute(
            "UPDATE meeting_occurrence_answers SET original = $3 WHERE attendee_id = $1 AND original = $2",
            &[Arg::id(*attendee), Arg::text(format!("moving:{to}")), Arg::text(to)],
        )
        .await?;
    }
    Ok(())
}

/// An attendee's answer for one occurrence: its own, or else the series answer.
pub fn answer_for(
    answers: &[(Uuid, chrono::NaiveDateTime, PartStat)],
    attendee: &Attendee,
    original: chrono::NaiveDateTime,
) -> PartStat {
    answers
        .iter()
        .find(|(a, o, _)| *a == attendee.id && *o == original)
        .map(|(_, _, p)| *p)
        .unwrap_or(attendee.partstat)
}

pub async fn enqueue(
    tx: &mut Tx,
    meeting: Uuid,
    kind: &str,
    attendee: Option<Uuid>,
    sequence: i64,
    detail: Value,
    now: DateTime<Utc>,
) -> Result<()> {
    tx.execute(
        "INSERT INTO meeting_outbox (id, meeting_id, kind, attendee_id, sequence, detail, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            Arg::id(Uuid::now_v7()),
            Arg::id(meeting),
            Arg::text(kind),
            Arg::Id(attendee),
            Arg::int(sequence),
            Arg::json(detail),
            Arg::time(now),
        ],
    )
    .await?;
    Ok(())
}

/// Messages not yet sent, oldest first.
pub async fn unsent(store: &Store, meeting: Uuid) -> Result<Vec<Outgoing>> {
    store
        .sql_fetch(
            "SELECT id, kind, attendee_id, sequence, detail, created_at FROM meeting_outbox \
             WHERE meeting_id = $1 AND sent_at IS NULL ORDER BY created_at, id",
            &[Arg::id(meeting)],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(Outgoing {
                id: row.id("id")?,
                kind: row.text("kind")?,
                attendee_id: row.opt_id("attendee_id")?,
                sequence: row.int("sequence")?,
                detail: row.json("detail")?,
                created_at: row.time("created_at")?,
            })
        })
        .collect()
}

pub async fn mark_sent(store: &Store, id: Uuid, now: DateTime<Utc>) -> Result<()> {
    store
        .sql_execute(
            "UPDATE meeting_outbox SET sent_at = $2 WHERE id = $1 AND sent_at IS NULL",
            &[Arg::id(id), Arg::time(now)],
        )
        .await?;
    Ok(())
}

/// Only a hash of a feed token is stored; the URL holds the token.
pub fn feed_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Issues a feed token for `email` in `tenant`; answers (id, token).
pub async fn feed_create(
    store: &Store,
    tenant: &str,
    email: &str,
    now: DateTime<Utc>,
) -> Result<(Uuid, String)> {
    let id = Uuid::now_v7();
    // 256 random bits, URL-safe: the token is the feed's only permission.
    let token = hex::encode(rand::random::<[u8; 32]>());
    store
        .sql_execute(
            "INSERT INTO meeting_feeds (id, tenant, email, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[
                Arg::id(id),
                Arg::text(tenant),
                Arg::text(email.to_ascii_lowercase()),
                Arg::text(feed_hash(&token)),
                Arg::time(now),
            ],
        )
        .await?;
    Ok((id, token))
}

/// Revokes a feed of `tenant`; `false` when there is no such live feed.
pub async fn feed_revoke(
    store: &Store,
    tenant: &str,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<bool> {
    Ok(store
        .sql_execute(
            "UPDATE meeting_feeds SET revoked_at = $3 WHERE id = $1 AND tenant = $2 AND revoked_at IS NULL",
            &[Arg::id(id), Arg::text(tenant), Arg::time(now)],
        )
        .await?
        > 0)
}

/// The live feed a token opens: (tenant, email).
pub async fn feed_open(store: &Store, token: &str) -> Result<Option<(String, String)>> {
    let rows = store
        .sql_fetch(
            "SELECT tenant, email FROM meeting_feeds WHERE token_hash = $1 AND revoked_at IS NULL",
            &[Arg::text(feed_hash(token))],
        )
        .await?;
    rows.first()
        .map(|r| Ok((r.text("tenant")?, r.text("email")?)))
        .transpose()
}

/// The meetings of `tenant` that list `email` as a (current) attendee, with that
/// attendee's row.
pub async fn meetings_of(
    store: &Store,
    tenant: &str,
    email: &str,
) -> Result<Vec<(Meeting, Attendee)>> {
    let sql = "SELECT m.id, m.tenant, m.run_id, m.uid, m.sequence, m.status, m.spec, m.created_at, \
               m.updated_at, a.id AS a_id FROM meetings m JOIN meeting_attendees a ON a.meeting_id = m.id \
               WHERE m.tenant = $1 AND a.email = $2 AND a.removed = $3 ORDER BY m.id";
    let rows = store
        .sql_fetch(
            sql,
            &[Arg::text(tenant), Arg::text(email), Arg::Bool(Some(false))],
        )
        .await?;
    let mut out = Vec::new();
    for row in &rows {
        let meeting = meeting_row(row)?;
        let a_id = row.id("a_id")?;
        if let Some(a) = attendees(store, meeting.id)
            .await?
            .into_iter()
            .find(|a| a.id == a_id)
        {
            out.push((meeting, a));
        }
    }
    Ok(out)
}
