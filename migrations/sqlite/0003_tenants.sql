-- Tenants: the same tables as migrations/postgres/0003_tenants.sql (see there for what
-- the columns mean). Timestamps are integer milliseconds since the Unix epoch (UTC);
-- ids are UUID text.

CREATE TABLE waymark_installation (
    singleton  INTEGER PRIMARY KEY NOT NULL DEFAULT 1 CHECK (singleton = 1),
    id         TEXT    NOT NULL CHECK (length(id) = 12 AND id NOT GLOB '*[^0-9a-f]*'),
    created_at INTEGER NOT NULL
);
INSERT INTO waymark_installation (singleton, id, created_at)
VALUES (1, lower(hex(randomblob(6))), CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER));

CREATE TABLE waymark_tenant_plans (
    name          TEXT    PRIMARY KEY NOT NULL
                  CHECK (length(name) BETWEEN 1 AND 32 AND name GLOB '[a-z]*' AND name NOT GLOB '*[^a-z0-9-]*'),
    storage_bytes INTEGER NOT NULL CHECK (storage_bytes >= 0),
    runs          INTEGER CHECK (runs IS NULL OR runs >= 0),
    updated_at    INTEGER NOT NULL
);
INSERT INTO waymark_tenant_plans (name, storage_bytes, runs, updated_at) VALUES
    ('free', 1073741824, 1000, 0),
    ('pro', 107374182400, 100000, 0),
    ('enterprise', 1099511627776, NULL, 0);

CREATE TABLE waymark_tenants (
    slug                TEXT    PRIMARY KEY NOT NULL,
    name                TEXT    NOT NULL,
    plan                TEXT    NOT NULL,
    admin_email         TEXT    NOT NULL,
    storage_quota_bytes INTEGER NOT NULL CHECK (storage_quota_bytes >= 0),
    runs_quota          INTEGER CHECK (runs_quota IS NULL OR runs_quota >= 0),
    status              TEXT    NOT NULL,
    reason              TEXT,
    run_id              TEXT,
    admin_key_id        TEXT,
    deprovision_run_id  TEXT,
    deprovisions        INTEGER NOT NULL DEFAULT 0 CHECK (deprovisions >= 0),
    export_prefix       TEXT,
    paused_schedules    TEXT    NOT NULL DEFAULT '[]',
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    activated_at        INTEGER,
    suspended_at        INTEGER,
    purge_started_at    INTEGER,
    deleted_at          INTEGER,

    CONSTRAINT waymark_tenants_status_known
        CHECK (status IN ('provisioning', 'active', 'failed', 'suspended', 'deleted')),
    CONSTRAINT waymark_tenants_failed_has_reason CHECK (status <> 'failed' OR reason IS NOT NULL),
    CONSTRAINT waymark_tenants_active_was_activated CHECK (status <> 'active' OR activated_at IS NOT NULL),
    CONSTRAINT waymark_tenants_suspended_iff_suspended_at
        CHECK ((status = 'suspended') = (suspended_at IS NOT NULL)),
    CONSTRAINT waymark_tenants_deleted_iff_deleted_at
        CHECK ((status = 'deleted') = (deleted_at IS NOT NULL)),
    CONSTRAINT waymark_tenants_purging_while_suspended
        CHECK (purge_started_at IS NULL OR status IN ('suspended', 'deleted'))
);
CREATE INDEX waymark_tenants_status ON waymark_tenants (status, slug);

CREATE TABLE waymark_tenant_resources (
    tenant     TEXT    NOT NULL REFERENCES waymark_tenants (slug),
    kind       TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    run_id     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, kind, name),
    CONSTRAINT waymark_tenant_resources_kind_known CHECK (kind IN (
        'database_role', 'database_schema', 'database_file', 'storage_prefix', 'api_key', 'export'))
);
