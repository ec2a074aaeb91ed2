-- A tenant's own tables in its database file: the same as
-- tenant_migrations/postgres/0001_plan_tables.sql. Timestamps are integer milliseconds.

CREATE TABLE plan (
    singleton     INTEGER PRIMARY KEY NOT NULL DEFAULT 1 CHECK (singleton = 1),
    name          TEXT    NOT NULL,
    storage_bytes INTEGER NOT NULL CHECK (storage_bytes >= 0),
    runs          INTEGER CHECK (runs IS NULL OR runs >= 0),
    updated_at    INTEGER NOT NULL
);

CREATE TABLE members (
    email      TEXT    PRIMARY KEY NOT NULL,
    role       TEXT    NOT NULL CHECK (role IN ('admin', 'member')),
    created_at INTEGER NOT NULL
);

CREATE TABLE projects (
    id         TEXT    PRIMARY KEY NOT NULL,
    name       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE usage (
    day           TEXT    PRIMARY KEY NOT NULL,
    runs          INTEGER NOT NULL DEFAULT 0 CHECK (runs >= 0),
    storage_bytes INTEGER NOT NULL DEFAULT 0 CHECK (storage_bytes >= 0)
);
