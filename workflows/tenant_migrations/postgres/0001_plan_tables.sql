-- A tenant's own tables, created inside its schema (`tenant_<slug>`) by its role: the
-- runner sets `search_path` to the schema and `ROLE` to the tenant's role, so every
-- object below is unqualified and owned by the tenant's role.

-- The plan and quotas the tenant was provisioned with.
CREATE TABLE plan (
    singleton     boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    name          text        NOT NULL,
    storage_bytes bigint      NOT NULL CHECK (storage_bytes >= 0),
    runs          bigint      CHECK (runs IS NULL OR runs >= 0),
    updated_at    timestamptz NOT NULL
);

CREATE TABLE members (
    email      text        PRIMARY KEY,
    role       text        NOT NULL CHECK (role IN ('admin', 'member')),
    created_at timestamptz NOT NULL
);

CREATE TABLE projects (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);

-- Daily usage, counted against the plan's quotas.
CREATE TABLE usage (
    day           date   PRIMARY KEY,
    runs          bigint NOT NULL DEFAULT 0 CHECK (runs >= 0),
    storage_bytes bigint NOT NULL DEFAULT 0 CHECK (storage_bytes >= 0)
);
