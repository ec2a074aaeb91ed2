//! Schedules, and the named leases that make one process the scheduler: every
//! scheduler step is fenced by its lease's token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::ops::{in_tx, PgOps};
use super::{secs, PgStore};
use crate::error::StoreError;
use crate::store::logic;
use crate::store::{CatchUp, Overlap, Run, Schedule, ScheduleAdvance, StoreResult, TenantScope};

#[derive(sqlx::FromRow)]
struct ScheduleRow {
    id: Uuid,
    tenant: String,
    name: String,
    cron: String,
    timezone: String,
    workflow: String,
    input: Value,
    overlap: String,
    catch_up: String,
    paused: bool,
    last_fired_at: DateTime<Utc>,
    next_fire_at: Option<DateTime<Utc>>,
    last_run_id: Option<Uuid>,
    buffered_fire_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    created_by: String,
}

impl TryFrom<ScheduleRow> for Schedule {
    type Error = StoreError;

    fn try_from(r: ScheduleRow) -> StoreResult<Self> {
        Ok(Schedule {
            id: r.id,
            tenant: r.tenant,
            name: r.name,
            cron: r.cron,
            timezone: r.timezone,
            workflow: r.workflow,
            input: r.input,
            overlap: Overlap::parse(&r.overlap)
                .ok_or_else(|| StoreError::Corrupt(format!("overlap {:?}", r.overlap)))?,
            catch_up: CatchUp::parse(&r.catch_up)
                .ok_or_else(|| StoreError::Corrupt(format!("catch_up {:?}", r.catch_up)))?,
            paused: r.paused,
            last_fired_at: r.last_fired_at,
            next_fire_at: r.next_fire_at,
            last_run_id: r.last_run_id,
            buffered_fire_at: r.buffered_fire_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
            created_by: r.created_by,
        })
    }
}

fn name_taken(error: sqlx::Error, name: &str) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(format!("a schedule named {name:?} already exists"))
        }
        _ => StoreError::Database(error),
    }
}

impl PgStore {
    pub(in crate::store) async fn schedule_insert(
        &self,
        s: &Schedule,
        if_absent: bool,
    ) -> StoreResult<Option<Schedule>> {
        let sql = format!(
            r#"INSERT INTO waymark_schedules (id, tenant, name, cron, timezone, workflow, input, overlap,
                   catch_up, paused, last_fired_at, next_fire_at, created_at, updated_at, created_by)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14)
               {} RETURNING *"#,
            if if_absent {
                "ON CONFLICT (tenant, name) DO NOTHING"
            } else {
                ""
            }
        );
        let row: Option<ScheduleRow> = sqlx::query_as(&sql)
            .bind(s.id)
            .bind(&s.tenant)
            .bind(&s.name)
            .bind(&s.cron)
            .bind(&s.timezone)
            .bind(&s.workflow)
            .bind(&s.input)
            .bind(s.overlap.as_str())
            .bind(s.catch_up.as_str())
            .bind(s.paused)
            .bind(s.last_fired_at)
            .bind(s.next_fire_at)
            .bind(s.created_at)
            .bind(&s.created_by)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| name_taken(e, &s.name))?;
        row.map(Schedule::try_from).transpose()
    }

    pub(in crate::store) async fn schedule_get(
        &self,
        scope: &TenantScope,
        id: Uuid,
    ) -> StoreResult<Option<Schedule>> {
        let row: Option<ScheduleRow> = sqlx::query_as(
            "SELECT * FROM waymark_schedules WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
        )
        .bind(id)
        .bind(scope.tenant())
        .fetch_optional(&self.pool)
        .await?;
        row.map(Schedule::try_from).transpose()
    }

    pub(in crate::store) async fn schedule_list(
        &self,
        scope: &TenantScope,
    ) -> StoreResult<Vec<Schedule>> {
        let rows: Vec<ScheduleRow> = sqlx::query_as(
            "SELECT * FROM waymark_schedules WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, name",
        )
        .bind(scope.tenant())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Schedule::try_from).collect()
    }

    pub(in crate::store) async fn schedules_page(
        &self,
        scope: &TenantScope,
        after: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<Schedule>> {
        let rows: Vec<ScheduleRow> = sqlx::query_as(
            "SELECT * FROM waymark_schedules WHERE ($1::text IS NULL OR tenant = $1) AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(scope.tenant())
        .bind(after.unwrap_or(Uuid::nil()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Schedule::try_from).collect()
    }

    pub(in crate::store) async fn schedule_update(&self, s: &Schedule) -> StoreResult<Schedule> {
        let row: ScheduleRow = sqlx::query_as(
            r#"UPDATE waymark_schedules SET name = $2, cron = $3, timezone = $4, workflow = $5, input = $6,
                   overlap = $7, catch_up = $8, paused = $9, last_fired_at = $10, next_fire_at = $11,
                   buffered_fire_at = $12, updated_at = $13
               WHERE id = $1 RETURNING *"#,
        )
        .bind(s.id)
        .bind(&s.name)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(&s.workflow)
        .bind(&s.input)
        .bind(s.overlap.as_str())
        .bind(s.catch_up.as_str())
        .bind(s.paused)
        .bind(s.last_fired_at)
        .bind(s.next_fire_at)
        .bind(s.buffered_fire_at)
        .bind(s.updated_at)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| name_taken(e, &s.name))?;
        row.try_into()
    }

    pub(in crate::store) async fn schedule_delete(
        &self,
        scope: &TenantScope,
        id: Uuid,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "DELETE FROM waymark_schedules WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
        )
        .bind(id)
        .bind(scope.tenant())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(in crate::store) async fn schedules_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Schedule>> {
        let rows: Vec<ScheduleRow> = sqlx::query_as(
            r#"SELECT * FROM waymark_schedules
               WHERE NOT paused AND (next_fire_at <= $1 OR buffered_fire_at IS NOT NULL)
               ORDER BY next_fire_at LIMIT $2"#,
        )
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Schedule::try_from).collect()
    }

    pub(in crate::store) async fn lease_acquire(
        &self,
        name: &str,
        holder: Uuid,
        lease: Duration,
    ) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(
            r#"INSERT INTO waymark_leases (name, holder, token, expires_at)
               VALUES ($1, $2, 1, now() + make_interval(secs => $3))
               ON CONFLICT (name) DO UPDATE SET
                   token = CASE WHEN waymark_leases.holder = $2 THEN waymark_leases.token
                                ELSE waymark_leases.token + 1 END,
                   holder = $2,
                   expires_at = now() + make_interval(secs => $3)
               WHERE waymark_leases.holder = $2 OR waymark_leases.expires_at < now()
               RETURNING token"#,
        )
        .bind(name)
        .bind(holder)
        .bind(secs(lease))
        .fetch_optional(&self.pool)
        .await?)
    }

    pub(in crate::store) async fn lease_release(
        &self,
        name: &str,
        holder: Uuid,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE waymark_leases SET expires_at = now() - interval '1 millisecond' WHERE name = $1 AND holder = $2",
        )
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(in crate::store) async fn schedule_advance(
        &self,
        a: &ScheduleAdvance,
    ) -> StoreResult<Option<Run>> {
        in_tx!(self, ops => logic::schedule_advance(ops, a))
    }
}
