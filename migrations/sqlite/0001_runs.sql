-- Embedded SQLite schema: the same tables and lifecycle constraints as
-- migrations/postgres/0001_runs.sql. Timestamps are integer milliseconds since the
-- Unix epoch (UTC); ids are UUID text; JSON is text.

CREATE TABLE waymark_runs (
    id                TEXT    PRIMARY KEY NOT NULL,
    tenant            TEXT    NOT NULL,
    workflow          TEXT    NOT NULL,
    workflow_version  INTEGER NOT NULL CHECK (workflow_version >= 1),
    status            TEXT    NOT NULL,
    state             TEXT    NOT NULL,
    state_data        TEXT    NOT NULL,
    input             TEXT    NOT NULL,
    output            TEXT,
    error             TEXT,
    idempotency_key   TEXT,
    capability        TEXT,
    visit             INTEGER NOT NULL DEFAULT 1 CHECK (visit >= 1),
    attempt           INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    due_at            INTEGER,
    lease_token       INTEGER NOT NULL DEFAULT 0,
    locked_by         TEXT,
    lease_expires_at  INTEGER,
    -- Child runs: the parent, the parent's visit that started them, and their order.
    parent_id         TEXT,
    parent_visit      INTEGER,
    child_index       INTEGER,
    -- While waiting: the signals awaited and where each leads, the timeout, children.
    waiting_for       TEXT,
    -- What this visit received: the consumed signal, or the visit whose children it gathers.
    received          TEXT,
    -- An operator asked to cancel while a worker held the run (who, why, when).
    cancel_request    TEXT,
    -- Why the run is compensating (and how it will end: failed or cancelled); kept after.
    ending            TEXT,
    -- Failed under `on_failure: hold`: an operator may retry it from its failed state.
    tags              TEXT    NOT NULL DEFAULT '[]',
    held              INTEGER NOT NULL DEFAULT 0,
    progress_pct      REAL,
    progress_message  TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    finished_at       INTEGER,

    CONSTRAINT waymark_runs_status_known CHECK (status IN (
        'pending', 'running', 'sleeping', 'waiting', 'retrying',
        'compensating', 'completed', 'failed', 'cancelled', 'compensation_failed')),
    -- Leased exactly when running; a compensating run may or may not be leased.
    CONSTRAINT waymark_runs_lease_iff_running CHECK (
        (status = 'running') = (locked_by IS NOT NULL AND lease_expires_at IS NOT NULL)
        OR (status = 'compensating'
            AND (locked_by IS NULL) = (lease_expires_at IS NULL))),
    CONSTRAINT waymark_runs_due_when_claimable CHECK (
        status NOT IN ('pending', 'sleeping', 'retrying', 'running', 'compensating')
        OR due_at IS NOT NULL),
    CONSTRAINT waymark_runs_finished_iff_terminal CHECK (
        (status IN ('completed', 'failed', 'cancelled')) = (finished_at IS NOT NULL)),
    CONSTRAINT waymark_runs_terminal_not_due CHECK (
        status NOT IN ('completed', 'failed', 'cancelled', 'compensation_failed') OR due_at IS NULL),
    -- A completed run has its output; a completed child whose parent compensates keeps
    -- it while it is undone.
    CONSTRAINT waymark_runs_completed_has_output CHECK (
        status <> 'completed' OR output IS NOT NULL),
    CONSTRAINT waymark_runs_failed_has_error CHECK (
        status NOT IN ('failed', 'retrying', 'compensation_failed') OR error IS NOT NULL
        OR ending IS NOT NULL),
    CONSTRAINT waymark_runs_waiting_has_what CHECK (
        status <> 'waiting' OR waiting_for IS NOT NULL),
    CONSTRAINT waymark_runs_compensating_has_ending CHECK (
        status NOT IN ('compensating', 'compensation_failed', 'cancelled') OR ending IS NOT NULL),
    CONSTRAINT waymark_runs_child_complete CHECK (
        (parent_id IS NULL) = (parent_visit IS NULL) AND (parent_id IS NULL) = (child_index IS NULL))
);

CREATE UNIQUE INDEX waymark_runs_idempotency
    ON waymark_runs (tenant, workflow, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX waymark_runs_due ON waymark_runs (due_at)
    WHERE status IN ('pending', 'sleeping', 'retrying');
CREATE INDEX waymark_runs_expired_leases ON waymark_runs (lease_expires_at)
    WHERE status = 'running';
CREATE INDEX waymark_runs_locked_by ON waymark_runs (locked_by) WHERE locked_by IS NOT NULL;
-- Listing: ids are UUIDv7, so id order is creation order and keyset pages on id.
CREATE INDEX waymark_runs_tenant_id ON waymark_runs (tenant, id DESC);
CREATE INDEX waymark_runs_tenant_status ON waymark_runs (tenant, status, id DESC);
CREATE INDEX waymark_runs_tenant_workflow ON waymark_runs (tenant, workflow, id DESC);
CREATE UNIQUE INDEX waymark_runs_children
    ON waymark_runs (parent_id, parent_visit, child_index) WHERE parent_id IS NOT NULL;
-- Compensating runs waiting for a worker, and waits whose timeout is due.
CREATE INDEX waymark_runs_compensating ON waymark_runs (due_at)
    WHERE status = 'compensating' AND locked_by IS NULL;
CREATE INDEX waymark_runs_wait_timeouts ON waymark_runs (due_at)
    WHERE status = 'waiting' AND due_at IS NOT NULL;
CREATE INDEX waymark_runs_finished ON waymark_runs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE waymark_history (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       TEXT    NOT NULL REFERENCES waymark_runs (id) ON DELETE CASCADE,
    from_state   TEXT,
    to_state     TEXT    NOT NULL,
    from_status  TEXT,
    to_status    TEXT    NOT NULL,
    cause        TEXT    NOT NULL,
    visit        INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    worker_id    TEXT,
    started_at   INTEGER NOT NULL,
    committed_at INTEGER NOT NULL,
    error        TEXT
);
CREATE INDEX waymark_history_run ON waymark_history (run_id, id);

CREATE TABLE waymark_signals (
    id              TEXT    PRIMARY KEY NOT NULL,
    run_id          TEXT    NOT NULL REFERENCES waymark_runs (id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    idempotency_key TEXT,
    actor           TEXT    NOT NULL,
    received_at     INTEGER NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'consumed', 'unconsumed')),
    -- The workflow version whose types the payload was checked against.
    workflow_version INTEGER NOT NULL DEFAULT 1,
    consumed_visit  INTEGER,
    CHECK ((status = 'consumed') = (consumed_visit IS NOT NULL))
);
CREATE UNIQUE INDEX waymark_signals_idempotency ON waymark_signals (run_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX waymark_signals_queued ON waymark_signals (run_id, received_at) WHERE status = 'queued';

CREATE TABLE waymark_compensations (
    run_id      TEXT    NOT NULL REFERENCES waymark_runs (id) ON DELETE CASCADE,
    visit       INTEGER NOT NULL,
    state       TEXT    NOT NULL,
    state_data  TEXT    NOT NULL,
    status      TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'skipped')),
    PRIMARY KEY (run_id, visit)
);

CREATE TABLE waymark_run_tags (
    run_id TEXT NOT NULL REFERENCES waymark_runs (id) ON DELETE CASCADE,
    tag    TEXT NOT NULL,
    PRIMARY KEY (tag, run_id)
);
CREATE INDEX waymark_run_tags_run ON waymark_run_tags (run_id);

CREATE TABLE waymark_keys (
    id           TEXT    PRIMARY KEY NOT NULL,
    tenant       TEXT    NOT NULL,
    prefix       TEXT    NOT NULL UNIQUE,
    secret_hash  TEXT    NOT NULL,
    scopes       TEXT    NOT NULL,
    name         TEXT,
    owner_email  TEXT,
    created_at   INTEGER NOT NULL,
    created_by   TEXT    NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    revoked_by   TEXT,
    last_used_at INTEGER,
    -- A secret nobody has seen yet (a scheduled rotation, a new tenant's admin key),
    -- sealed with the master key until its owner reveals it once; then only the hash.
    sealed_secret TEXT,
    revealed_at  INTEGER,
    -- Set while the key's tenant is suspended: the key does not authenticate.
    suspended_at INTEGER,
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);
CREATE INDEX waymark_keys_tenant ON waymark_keys (tenant, created_at);

CREATE TABLE waymark_audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    tenant  TEXT    NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    target  TEXT,
    detail  TEXT    NOT NULL DEFAULT '{}',
    address TEXT
);
CREATE INDEX waymark_audit_tenant ON waymark_audit (tenant, id);
CREATE TRIGGER waymark_audit_no_update BEFORE UPDATE ON waymark_audit
BEGIN
    SELECT RAISE(ABORT, 'waymark_audit is append-only');
END;
CREATE TRIGGER waymark_audit_no_delete BEFORE DELETE ON waymark_audit
BEGIN
    SELECT RAISE(ABORT, 'waymark_audit is append-only');
END;

CREATE TABLE waymark_workers (
    id                TEXT    PRIMARY KEY NOT NULL,
    host              TEXT    NOT NULL,
    pid               INTEGER NOT NULL,
    version           TEXT    NOT NULL,
    capabilities      TEXT    NOT NULL,
    workflows         TEXT    NOT NULL,
    started_at        INTEGER NOT NULL,
    last_heartbeat_at INTEGER NOT NULL,
    runs_in_hand      INTEGER NOT NULL DEFAULT 0,
    stopped_at        INTEGER
);
