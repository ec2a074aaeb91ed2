-- Workflows own their tables: each ships its migrations as a named schema (see the
-- engine's `store::schemas`), applied by `waymark migrate` after these and recorded
-- here per schema (the engine's own stay in `_sqlx_migrations`).
CREATE TABLE waymark_schema_migrations (
    schema_name TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version > 0),
    description TEXT NOT NULL,
    -- SHA-256 of the SQL as applied: a shipped migration edited afterwards is refused.
    checksum TEXT NOT NULL,
    applied_at INTEGER NOT NULL,
    PRIMARY KEY (schema_name, version)
);
