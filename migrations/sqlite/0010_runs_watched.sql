-- PostgreSQL announces an ending only to runs someone watches and to processes that
-- follow every ending (see the PostgreSQL migration of the same number). SQLite wakes
-- waiters in process and reads neither; it keeps the same columns and table so both
-- stores have one schema.
ALTER TABLE waymark_runs ADD COLUMN watched INTEGER NOT NULL DEFAULT 0 CHECK (watched IN (0, 1));

CREATE TABLE waymark_followers (
    process    TEXT PRIMARY KEY NOT NULL,
    expires_at TEXT NOT NULL
);
