-- The dashboard's sessions: a row per logged-in browser. Only a hash of the session
-- token is kept, so a copy of this table logs nobody in; the key is checked again on
-- every request, so revoking it ends its sessions at once.
CREATE TABLE waymark_ui_sessions (
    token_hash TEXT        PRIMARY KEY,
    key_id     UUID        NOT NULL,
    csrf       TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL CHECK (expires_at > created_at)
);
CREATE INDEX waymark_ui_sessions_key ON waymark_ui_sessions (key_id);
CREATE INDEX waymark_ui_sessions_expiry ON waymark_ui_sessions (expires_at);
