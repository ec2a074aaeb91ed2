//! Schedules, and the named leases that make one process the scheduler: every
//! scheduler step is fenced by its lease's token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::ops::{in_tx, SqliteOps};
use super::{from_ms, json, lease_ms, ms, opt_from_ms, uuid, SqliteStore, DB_NOW};
use crate::error::StoreError;
use crate::store::logic;
use crate::store::{CatchUp, Overlap, Run, Schedule, ScheduleAdvance, StoreResult, TenantScope};

#[derive(sqlx::FromRow)]
struct ScheduleRow {
    id: String,
    tenant: String,
    name: String,
    cron: String,
    timezone: String,
    workflow: String,
    input: String,
    overlap: String,
    catch_up: String,
    paused: bool,
    last_fired_at: i64,
    next_fire_at: Option<i64>,
    last_run_id: Option<String>,
    buffered_fire_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    created_by: String,
}

impl TryFrom<ScheduleRow> for Schedule {
    type Error = StoreError;

    fn try_from(r: ScheduleRow) -> StoreResult<Self> {
        Ok(Schedule {
            id: uuid(&r.id)?,
            tenant: r.tenant,
            name: r.name,
            cron: r.cron,
            timezone: r.timezone,
            workflow: r.workflow,
            input: json(&r.input)?,
            overlap: Overlap::parse(&r.overlap)
                .ok_or_else(|| StoreError::Corrupt(format!("overlap {:?}", r.overlap)))?,
            catch_up: CatchUp::parse(&r.catch_up)
                .ok_or_else(|| StoreError::Corrupt(format!("catch_up {:?}", r.catch_up)))?,
            paused: r.paused,
            last_fired_at: from_ms(r.last_fired_at)?,
            next_fire_at: opt_from_ms(r.next_fire_at)?,
            last_run_id: r.last_run_id.as_deref().map(uuid).transpose()?,
            buffered_fire_at: opt_from_ms(r.buffered_fire_at)?,
            created_at: from_ms(r.created_at)?,
            updated_at: from_ms(r.updated_at)?,
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

impl SqliteStore {
    pub(in crate::store) async fn schedule_insert(
        &self,
        s: &Schedule,
        if_absent: bool,
    ) -> StoreResult<Option<Schedule>> {
        let sql = format!(
            r#"INSERT INTO waymark_schedules (id, tenant, name, cron, timezone, workflow, input, overlap,
                   catch_up, paused, last_fired_at, next_fire_at, created_at, updated_at, created_by)
               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, ?14)
               {} RETURNING *"#,
            if if_absent {
                "ON CONFLICT (tenant, name) DO NOTHING"
            } else {
                ""
            }
        );
        let row: Option<ScheduleRow> = sqlx::query_as(&sql)
            .bind(s.id.to_string())
            .bind(&s.tenant)
            .bind(&s.name)
            .bind(&s.cron)
            .bind(&s.timezone)
            .bind(&s.workflow)
            .bind(s.input.to_string())
            .bind(s.overlap.as_str())
            .bind(s.catch_up.as_str())
            .bind(s.paused)
            .bind(ms(s.last_fired_at))
            .bind(s.next_fire_at.map(ms))
            .bind(ms(s.created_at))
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
            "SELECT * FROM waymark_schedules WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)",
        )
        .bind(id.to_string())
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
            "SELECT * FROM waymark_schedules WHERE (?1 IS NULL OR tenant = ?1) ORDER BY tenant, name",
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
            "SELECT * FROM waymark_schedules WHERE (?1 IS NULL OR tenant = ?1) AND id > ?2 \
             ORDER BY id LIMIT ?3",
        )
        .bind(scope.tenant())
        .bind(after.unwrap_or(Uuid::nil()).to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Schedule::try_from).collect()
    }

    pub(in crate::store) async fn schedule_update(&self, s: &Schedule) -> StoreResult<Schedule> {
        let row: ScheduleRow = sqlx::query_as(
            r#"UPDATE waymark_schedules SET name = ?2, cron = ?3, timezone = ?4, workflow = ?5, input = ?6,
                   overlap = ?7, catch_up = ?8, paused = ?9, last_fired_at = ?10, next_fire_at = ?11,
                   buffered_fire_at = ?12, updated_at = ?13
               WHERE id = ?1 RETURNING *"#,
        )
        .bind(s.id.to_string())
        .bind(&s.name)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(&s.workflow)
        .bind(s.input.to_string())
        .bind(s.overlap.as_str())
        .bind(s.catch_up.as_str())
        .bind(s.paused)
        .bind(ms(s.last_fired_at))
        .bind(s.next_fire_at.map(ms))
        .bind(s.buffered_fire_at.map(ms))
        .bind(ms(s.updated_at))
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
            "DELETE FROM waymark_schedules WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)",
        )
        .bind(id.to_string())
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
               WHERE NOT paused AND (next_fire_at <= ?1 OR buffered_fire_at IS NOT NULL)
               ORDER BY next_fire_at LIMIT ?2"#,
        )
        .bind(ms(now))
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
        Ok(sqlx::query_scalar(&format!(
            r#"INSERT INTO waymark_leases (name, holder, token, expires_at)
               VALUES (?1, ?2, 1, {DB_NOW} + ?3)
               ON CONFLICT (name) DO UPDATE SET
                   token = CASE WHEN waymark_leases.holder = ?2 THEN waymark_leases.token
                                ELSE waymark_leases.token + 1 END,
                   holder = ?2,
                   expires_at = {DB_NOW} + ?3
               WHERE waymark_leases.holder = ?2 OR waymark_leases.expires_at < {DB_NOW}
               RETURNING token"#
        ))
        .bind(name)
        .bind(holder.to_string())
        .bind(lease_ms(lease))
        .fetch_optional(&self.pool)
        .await?)
    }

    pub(in crate::store) async fn lease_release(
        &self,
        name: &str,
        holder: Uuid,
    ) -> StoreResult<()> {
        sqlx::query(&format!(
            "UPDATE waymark_leases SET expires_at = {DB_NOW} - 1 WHERE name = ?1 AND holder = ?2"
        ))
        .bind(name)
        .bind(holder.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(in crate::store) async fn schedule_advance(
        &self,
        a: &ScheduleAdvance,
    ) -> StoreResult<Option<Run>> {
        let run: StoreResult<Option<Run>> = in_tx!(self, ops => logic::schedule_advance(ops, a));
        let run = run?;
        if run.is_some() {
            self.bump();
        }
        Ok(run)
    }
}
