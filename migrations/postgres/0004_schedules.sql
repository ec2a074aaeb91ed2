-- Schedules: cron rules that start runs on their own, and the lease row under which
-- exactly one Waymark process at a time fires them.

CREATE TABLE waymark_schedules (
    id               uuid        PRIMARY KEY,
    tenant           text        NOT NULL,
    name             text        NOT NULL,
    cron             text        NOT NULL,
    timezone         text        NOT NULL,
    workflow         text        NOT NULL,
    input            jsonb       NOT NULL,
    overlap          text        NOT NULL DEFAULT 'skip'
                     CHECK (overlap IN ('skip', 'buffer_one', 'allow', 'cancel_previous')),
    catch_up         text        NOT NULL DEFAULT 'skip' CHECK (catch_up IN ('skip', 'run_once')),
    paused           boolean     NOT NULL DEFAULT false,
    -- The latest fire time handled (fired, skipped or buffered). Fire times up to it
    -- never fire again: the scheduler advances it with a compare-and-set.
    last_fired_at    timestamptz NOT NULL,
    -- The next fire time, for the scheduler's index and the API.
    next_fire_at     timestamptz,
    last_run_id      uuid,
    -- `buffer_one`: a fire time that waits for the previous run to end.
    buffered_fire_at timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    created_by       text        NOT NULL,
    UNIQUE (tenant, name)
);
CREATE INDEX waymark_schedules_due ON waymark_schedules (next_fire_at) WHERE NOT paused;
CREATE INDEX waymark_schedules_buffered ON waymark_schedules (buffered_fire_at)
    WHERE buffered_fire_at IS NOT NULL;

-- Named leases for loops that must run in one process at a time (the scheduler). The
-- token only increases; expiry is judged by database time, as for runs.
CREATE TABLE waymark_leases (
    name       text        PRIMARY KEY,
    holder     uuid        NOT NULL,
    token      bigint      NOT NULL,
    expires_at timestamptz NOT NULL
);
