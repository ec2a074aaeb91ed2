-- Tenants: the customers Waymark provisions as sagas (workflows `tenant_provisioning`
-- and `tenant_deprovisioning`; their SQL is in workflows/src/tenants/record.rs).
--
-- A tenant's status is written in three places that must agree: the Rust enum
-- `TenantStatus` (workflows/src/tenants/record.rs), the CHECK constraints below and the
-- diagram in README.md ("Tenants"). A test holds the enum and this table to each other.

-- Who this Waymark database is. PostgreSQL roles are cluster-wide, so a tenant's role
-- is named after this id as well as the slug: two Waymark databases on one server can
-- provision the same slug without sharing (or dropping) each other's role. The id also
-- keeps their prefixes apart in a shared bucket.
CREATE TABLE waymark_installation (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    id         text        NOT NULL CHECK (id ~ '^[0-9a-f]{12}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO waymark_installation (id)
VALUES (substr(md5(random()::text || clock_timestamp()::text || current_database()), 1, 12));

-- Plans and their quotas. Seeded with the defaults; `waymark` replaces the rows with
-- WAYMARK_TENANT_PLANS on start. A tenant copies its plan's quotas when it is created.
CREATE TABLE waymark_tenant_plans (
    name          text        PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9-]{0,31}$'),
    storage_bytes bigint      NOT NULL CHECK (storage_bytes >= 0),
    -- Runs the tenant may start; NULL is unlimited.
    runs          bigint      CHECK (runs IS NULL OR runs >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO waymark_tenant_plans (name, storage_bytes, runs) VALUES
    ('free', 1073741824, 1000),
    ('pro', 107374182400, 100000),
    ('enterprise', 1099511627776, NULL);

CREATE TABLE waymark_tenants (
    -- Also the `tenant` of its runs and keys. A slug stays taken in every status.
    slug                text        PRIMARY KEY,
    name                text        NOT NULL,
    plan                text        NOT NULL,
    admin_email         text        NOT NULL,
    storage_quota_bytes bigint      NOT NULL CHECK (storage_quota_bytes >= 0),
    runs_quota          bigint      CHECK (runs_quota IS NULL OR runs_quota >= 0),
    status              text        NOT NULL,
    -- Why it failed (or was deleted).
    reason              text,
    -- The provisioning run; set in the transaction that reserves the slug (PostgreSQL)
    -- or by the run's first step (SQLite), so it is NULL only inside that transaction.
    run_id              uuid,
    admin_key_id        uuid,
    -- The deprovisioning run in flight (or done, once deleted); cleared by a restore.
    deprovision_run_id  uuid,
    -- Deprovisionings started so far: names the next one's idempotency key.
    deprovisions        integer     NOT NULL DEFAULT 0 CHECK (deprovisions >= 0),
    -- Where the deprovisioning export lives; it outlives the tenant.
    export_prefix       text,
    -- The schedules a suspension paused (ids), resumed by a restore.
    paused_schedules    jsonb       NOT NULL DEFAULT '[]',
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    activated_at        timestamptz,
    suspended_at        timestamptz,
    -- Deletion has begun: a cancelled deprovisioning no longer reactivates the tenant.
    purge_started_at    timestamptz,
    deleted_at          timestamptz,

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

-- Every resource a tenant's sagas created, with the run that created it: removed when
-- the resource is. The deprovisioning export is kept after the tenant is deleted.
CREATE TABLE waymark_tenant_resources (
    tenant     text        NOT NULL REFERENCES waymark_tenants (slug),
    kind       text        NOT NULL,
    name       text        NOT NULL,
    run_id     uuid        NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant, kind, name),
    CONSTRAINT waymark_tenant_resources_kind_known CHECK (kind IN (
        'database_role', 'database_schema', 'database_file', 'storage_prefix', 'api_key', 'export'))
);
