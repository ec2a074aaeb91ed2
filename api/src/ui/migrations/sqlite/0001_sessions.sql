-- The same as migrations/postgres/0001_sessions.sql. Ids as text, times as integer
-- milliseconds (what the store's Arg and Row read and write).
CREATE TABLE waymark_ui_sessions (
    token_hash TEXT    PRIMARY KEY NOT NULL,
    key_id     TEXT    NOT NULL,
    csrf       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL CHECK (expires_at > created_at)
);
CREATE INDEX waymark_ui_sessions_key ON waymark_ui_sessions (key_id);
CREATE INDEX waymark_ui_sessions_expiry ON waymark_ui_sessions (expires_at);
