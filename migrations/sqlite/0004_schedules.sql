-- Schedules and named leases: the same as migrations/postgres/0004_schedules.sql.

CREATE TABLE waymark_schedules (
    id               TEXT    PRIMARY KEY NOT NULL,
    tenant           TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    cron             TEXT    NOT NULL,
    timezone         TEXT    NOT NULL,
    workflow         TEXT    NOT NULL,
    input            TEXT    NOT NULL,
    overlap          TEXT    NOT NULL DEFAULT 'skip'
                     CHECK (overlap IN ('skip', 'buffer_one', 'allow', 'cancel_previous')),
    catch_up         TEXT    NOT NULL DEFAULT 'skip' CHECK (catch_up IN ('skip', 'run_once')),
    paused           INTEGER NOT NULL DEFAULT 0,
    last_fired_at    INTEGER NOT NULL,
    next_fire_at     INTEGER,
    last_run_id      TEXT,
    buffered_fire_at INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    created_by       TEXT    NOT NULL,
    UNIQUE (tenant, name)
);
CREATE INDEX waymark_schedules_due ON waymark_schedules (next_fire_at) WHERE NOT paused;
CREATE INDEX waymark_schedules_buffered ON waymark_schedules (buffered_fire_at)
    WHERE buffered_fire_at IS NOT NULL;

CREATE TABLE waymark_leases (
    name       TEXT    PRIMARY KEY NOT NULL,
    holder     TEXT    NOT NULL,
    token      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
