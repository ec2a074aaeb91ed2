//! The scheduler: fires schedules' due times exactly once, whatever the number of
//! Waymark processes.
//!
//! Every process runs this loop, but only the holder of the `scheduler` lease row
//! (the same fenced-lease mechanism as runs: a token that only increases, expiry by
//! database time) fires anything. Each fire time is one transaction that starts the
//! run and moves the schedule's `last_fired_at` on with a compare-and-set, under that
//! lease; the run's idempotency key (schedule id + fire time) is a second guard.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waymark_engine::cron::CronSchedule;
use waymark_engine::store::{CatchUp, Overlap, Schedule, ScheduleAdvance};
use waymark_engine::{Engine, EngineError, StartRun, StoreError, TenantScope};

use crate::runner::error_chain;

/// The lease's name in `waymark_leases`.
pub const LEASE: &str = "scheduler";

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub holder: Uuid,
    /// The scheduler lease; renewed every tick.
    pub lease: Duration,
    /// How often the loop looks for due schedules.
    pub tick: Duration,
    /// Fire times later than this are "missed" and follow the schedule's catch-up rule.
    pub grace: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            holder: Uuid::now_v7(),
            lease: Duration::from_secs(15),
            tick: Duration::from_millis(500),
            grace: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    engine: Engine,
    config: SchedulerConfig,
}

impl Scheduler {
    pub fn new(engine: Engine, config: SchedulerConfig) -> Self {
        Self { engine, config }
    }

    /// Runs until `shutdown`, then gives the lease up so another process takes over
    /// without waiting for it to expire.
    pub async fn run(self, shutdown: CancellationToken) {
        let store = &self.engine.store;
        loop {
            match store
                .lease_acquire(LEASE, self.config.holder, self.config.lease)
                .await
            {
                Ok(Some(token)) => {
                    if let Err(error) = self.tick(token).await {
                        tracing::warn!(error = %error_chain(&error), "scheduler tick failed");
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "cannot take the scheduler lease")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.config.tick) => {}
            }
        }
        if let Err(error) = store.lease_release(LEASE, self.config.holder).await {
            tracing::warn!(error = %error_chain(&error), "cannot release the scheduler lease");
        }
    }

    /// One pass over the due schedules under lease token `token`.
    pub async fn tick(&self, token: i64) -> Result<(), StoreError> {
        let now = self.engine.clock.now();
        for schedule in self.engine.store.schedules_due(now, 200).await? {
            match self.advance(&schedule, token, now).await {
                Ok(()) => {}
                // Another process moved it on (it held the lease before us): fine.
                Err(StoreError::Conflict(_)) => {}
                Err(error @ StoreError::LeaseLost { .. }) => return Err(error),
                Err(error) => {
                    tracing::warn!(schedule = %schedule.id, error = %error_chain(&error), "schedule not advanced")
                }
            }
        }
        Ok(())
    }

    async fn advance(
        &self,
        schedule: &Schedule,
        token: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let cron = match CronSchedule::parse(&schedule.cron, &schedule.timezone) {
            Ok(cron) => cron,
            Err(error) => {
                // Validated when stored; a rule that no longer parses (a time zone the
                // new tz data dropped) must not stop the others.
                tracing::error!(schedule = %schedule.id, error = %error, "schedule cannot be parsed");
                return Ok(());
            }
        };
        let mut last = schedule.last_fired_at;
        let mut previous = schedule.last_run_id;
        let mut buffered = schedule.buffered_fire_at;

        // A buffered fire time starts as soon as the run before it has ended.
        if let Some(at) = buffered {
            if !self.is_live(previous).await? {
                let run = self.new_run(schedule, at);
                let started = self
                    .engine
                    .store
                    .schedule_advance(&ScheduleAdvance {
                        schedule_id: schedule.id,
                        expected_last: last,
                        last_fired_at: last,
                        next_fire_at: cron.next_after(last),
                        buffered_fire_at: None,
                        start: run,
                        lease: (self.config.holder, token),
                    })
                    .await?;
                if let Some(run) = started {
                    previous = Some(run.id);
                    self.engine.metrics.run_started(&run.workflow);
                }
                buffered = None;
            }
        }

        // Fire times missed by more than the grace (the process was down): skipped,
        // or the latest fired once.
        let cutoff = now - chrono::Duration::from_std(self.config.grace).unwrap_or_default();
        if let Some(missed) = cron.latest_in(last, cutoff) {
            let (start, next_buffered) = match schedule.catch_up {
                CatchUp::Skip => {
                    tracing::info!(schedule = %schedule.id, missed = %missed, "missed fire times skipped");
                    (None, buffered)
                }
                CatchUp::RunOnce => self.decide(schedule, missed, previous, buffered).await?,
            };
            let started = self
                .engine
                .store
                .schedule_advance(&ScheduleAdvance {
                    schedule_id: schedule.id,
                    expected_last: last,
                    last_fired_at: missed,
                    next_fire_at: cron.next_after(missed),
                    buffered_fire_at: next_buffered,
                    start,
                    lease: (self.config.holder, token),
                })
                .await?;
            if let Some(run) = started {
                previous = Some(run.id);
                self.engine.metrics.run_started(&run.workflow);
            }
            buffered = next_buffered;
            last = missed;
        }

        // Every fire time within the grace, in order: none is lost to a slow tick.
        while let Some(at) = cron.next_after(last).filter(|at| *at <= now) {
            let (start, next_buffered) = self.decide(schedule, at, previous, buffered).await?;
            let started = self
                .engine
                .store
                .schedule_advance(&ScheduleAdvance {
                    schedule_id: schedule.id,
                    expected_last: last,
                    last_fired_at: at,
                    next_fire_at: cron.next_after(at),
                    buffered_fire_at: next_buffered,
                    start,
                    lease: (self.config.holder, token),
                })
                .await?;
            if let Some(run) = started {
                previous = Some(run.id);
                self.engine.metrics.run_started(&run.workflow);
            }
            buffered = next_buffered;
            last = at;
        }
        Ok(())
    }

    /// What to do at fire time `at` under the overlap policy: the run to start, and the
    /// buffered fire time afterwards.
    async fn decide(
        &self,
        schedule: &Schedule,
        at: DateTime<Utc>,
        previous: Option<Uuid>,
        buffered: Option<DateTime<Utc>>,
    ) -> Result<(Option<waymark_engine::store::NewRun>, Option<DateTime<Utc>>), StoreError> {
        let live = self.is_live(previous).await?;
        Ok(match (schedule.overlap, live) {
            (_, false) | (Overlap::Allow, true) => (self.new_run(schedule, at), buffered),
            (Overlap::Skip, true) => {
                tracing::info!(schedule = %schedule.id, at = %at, "previous run still live; fire time skipped");
                (None, buffered)
            }
            (Overlap::BufferOne, true) => (None, Some(at)),
            (Overlap::CancelPrevious, true) => {
                if let Some(id) = previous {
                    let actor = format!("schedule:{}", schedule.id);
                    match self
                        .engine
                        .cancel(
                            &TenantScope::All,
                            id,
                            &actor,
                            "a newer scheduled run replaces it",
                            None,
                        )
                        .await
                    {
                        Ok(_)
                        | Err(EngineError::Conflict(_))
                        | Err(EngineError::RunNotFound(_)) => {}
                        Err(EngineError::Store(error)) => return Err(error),
                        Err(other) => {
                            tracing::warn!(error = %other, "cannot cancel the previous run")
                        }
                    }
                }
                (self.new_run(schedule, at), buffered)
            }
        })
    }

    async fn is_live(&self, run: Option<Uuid>) -> Result<bool, StoreError> {
        let Some(id) = run else { return Ok(false) };
        Ok(self
            .engine
            .store
            .run_get(&TenantScope::All, id)
            .await?
            .is_some_and(|r| !r.status.is_terminal()))
    }

    /// The run for fire time `at`; `None` (logged) if the schedule's input no longer
    /// fits its workflow.
    fn new_run(
        &self,
        schedule: &Schedule,
        at: DateTime<Utc>,
    ) -> Option<waymark_engine::store::NewRun> {
        let request = StartRun {
            tenant: schedule.tenant.clone(),
            workflow: schedule.workflow.clone(),
            input: schedule.input.clone(),
            idempotency_key: Some(fire_key(schedule.id, at)),
            tags: vec![format!("schedule:{}", schedule.id)],
            actor: format!("schedule:{}", schedule.id),
        };
        match self.engine.prepare(request) {
            Ok(mut run) => {
                run.now = self.engine.clock.now();
                Some(run)
            }
            Err(error) => {
                tracing::error!(schedule = %schedule.id, error = %error, "scheduled run cannot start; fire time skipped");
                None
            }
        }
    }
}

/// The idempotency key of the run a schedule starts at `at`.
pub fn fire_key(schedule: Uuid, at: DateTime<Utc>) -> String {
    format!(
        "schedule:{schedule}:{}",
        at.to_rfc3339_opts(SecondsFormat::Secs, true)
    )
}
