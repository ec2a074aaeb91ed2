-- Runs, their transition history and the worker registry.
--
-- The run lifecycle is written in three places that must agree: the Rust enum
-- `RunStatus` (engine/src/status.rs), the CHECK constraints below, and the diagram in
-- README.md. A test (`lifecycle::database_accepts_exactly_the_rust_statuses`) keeps
-- the first two in step.

CREATE TABLE waymark_runs (
    id                uuid        PRIMARY KEY,
    tenant            text        NOT NULL,
    workflow          text        NOT NULL,
    workflow_version  integer     NOT NULL CHECK (workflow_version >= 1),
    status            text        NOT NULL,
    state             text        NOT NULL,
    state_data        jsonb       NOT NULL,
    input             jsonb       NOT NULL,
    output            jsonb,
    error             jsonb,
    idempotency_key   text,
    -- The capability the current state's step needs (e.g. `transcode`); only workers
    -- that advertise it claim the run.
    capability        text,
    -- Visit sequence: +1 every time the run enters a state, so (id, visit) names one
    -- visit and is the base of the idempotency key steps receive.
    visit             bigint      NOT NULL DEFAULT 1 CHECK (visit >= 1),
    -- Attempts started for the current visit.
    attempt           integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    -- When the run may next be claimed (judged by the engine's clock).
    due_at            timestamptz,
    -- Fencing: the token only increases; every write after a claim names it.
    lease_token       bigint      NOT NULL DEFAULT 0,
    locked_by         uuid,
    -- Judged by database time (now()), never by a worker's clock.
    lease_expires_at  timestamptz,
    -- Child runs: the parent, the parent's visit that started them, and their order.
    parent_id         uuid,
    parent_visit      bigint,
    child_index       integer,
    -- While waiting: the signals awaited and where each leads, the timeout, children.
    waiting_for       jsonb,
    -- What this visit received: the consumed signal, or the visit whose children it gathers.
    received          jsonb,
    -- An operator asked to cancel while a worker held the run (who, why, when).
    cancel_request    jsonb,
    -- Why the run is compensating (and how it will end: failed or cancelled); kept after.
    ending            jsonb,
    -- Failed under `on_failure: hold`: an operator may retry it from its failed state.
    -- Searchable labels given at start (e.g. a business id); also in waymark_run_tags.
    tags              jsonb       NOT NULL DEFAULT '[]',
    held              boolean     NOT NULL DEFAULT false,
    progress_pct      real,
    progress_message  text,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    finished_at       timestamptz,

    CONSTRAINT waymark_runs_status_known CHECK (status IN (
        'pending', 'running', 'sleeping', 'waiting', 'retrying',
        'compensating', 'completed', 'failed', 'cancelled', 'compensation_failed')),
    -- A run is leased exactly when it is running (or compensating under a worker).
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

-- The claim query's two halves: due work, and leases that expired.
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
    id           bigserial   PRIMARY KEY,
    run_id       uuid        NOT NULL REFERENCES waymark_runs (id) ON DELETE CASCADE,
    from_state   text,
    to_state     text        NOT NULL,
    from_status  text,
    to_status    text        NOT NULL,
    cause        text        NOT NULL,
    visit        bigint      NOT NULL,
    attempt      integer     NOT NULL,
    actor        text        NOT NULL,
    worker_id    uuid,
    started_at   timestamptz NOT NULL,
    committed_at timestamptz NOT NULL,
    error        jsonb
);
CREATE INDEX waymark_history_run ON waymark_history (run_id, id);

-- Signals: persisted on arrival, consumed by the waiting state in the same transaction
-- as its transition, or recorded as unconsumed when the run ends.
CREATE TABLE waymark_signals (
    id              uuid        PRIMARY KEY,
    run_id          uuid        NOT NULL REFERENCES waymark_runs (id) ON DELETE CASCADE,
    name            text        NOT NULL,
    payload         jsonb       NOT NULL,
    idempotency_key text,
    actor           text        NOT NULL,
    received_at     timestamptz NOT NULL,
    status          text        NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'consumed', 'unconsumed')),
    -- The workflow version whose types the payload was checked against.
    workflow_version integer     NOT NULL DEFAULT 1,
    consumed_visit  bigint,
    CHECK ((status = 'consumed') = (consumed_visit IS NOT NULL))
);
CREATE UNIQUE INDEX waymark_signals_idempotency ON waymark_signals (run_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX waymark_signals_queued ON waymark_signals (run_id, received_at) WHERE status = 'queued';

-- One row per visit of a state that declares a compensation, written when the state is
-- entered; compensation runs them newest first.
CREATE TABLE waymark_compensations (
    run_id      uuid    NOT NULL REFERENCES waymark_runs (id) ON DELETE CASCADE,
    visit       bigint  NOT NULL,
    state       text    NOT NULL,
    state_data  jsonb   NOT NULL,
    status      text    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'skipped')),
    PRIMARY KEY (run_id, visit)
);

CREATE TABLE waymark_run_tags (
    run_id uuid NOT NULL REFERENCES waymark_runs (id) ON DELETE CASCADE,
    tag    text NOT NULL,
    PRIMARY KEY (tag, run_id)
);
CREATE INDEX waymark_run_tags_run ON waymark_run_tags (run_id);

-- API keys. Only a hash of each secret is kept; the prefix finds the row.
CREATE TABLE waymark_keys (
    id           uuid        PRIMARY KEY,
    tenant       text        NOT NULL,
    prefix       text        NOT NULL UNIQUE,
    secret_hash  text        NOT NULL,
    scopes       jsonb       NOT NULL,
    name         text,
    owner_email  text,
    created_at   timestamptz NOT NULL,
    created_by   text        NOT NULL,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    revoked_by   text,
    last_used_at timestamptz,
    -- A secret nobody has seen yet (a scheduled rotation, a new tenant's admin key),
    -- sealed with the master key until its owner reveals it once; then only the hash.
    sealed_secret text,
    revealed_at  timestamptz,
    -- Set while the key's tenant is suspended: the key does not authenticate.
    suspended_at timestamptz,
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);
CREATE INDEX waymark_keys_tenant ON waymark_keys (tenant, created_at);

-- The audit log: who did what, when, from where. Append-only, enforced below.
CREATE TABLE waymark_audit (
    id      bigserial   PRIMARY KEY,
    at      timestamptz NOT NULL,
    tenant  text        NOT NULL,
    actor   text        NOT NULL,
    action  text        NOT NULL,
    target  text,
    detail  jsonb       NOT NULL DEFAULT '{}',
    address text
);
CREATE INDEX waymark_audit_tenant ON waymark_audit (tenant, id);

CREATE FUNCTION waymark_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'waymark_audit is append-only';
END;
$$;
CREATE TRIGGER waymark_audit_no_update BEFORE UPDATE OR DELETE ON waymark_audit
    FOR EACH ROW EXECUTE FUNCTION waymark_audit_append_only();

CREATE TABLE waymark_workers (
    id                uuid        PRIMARY KEY,
    host              text        NOT NULL,
    pid               integer     NOT NULL,
    version           text        NOT NULL,
    capabilities      jsonb       NOT NULL,
    workflows         jsonb       NOT NULL,
    started_at        timestamptz NOT NULL,
    last_heartbeat_at timestamptz NOT NULL,
    runs_in_hand      integer     NOT NULL DEFAULT 0,
    stopped_at        timestamptz
);

-- Wake idle workers the moment a run becomes claimable now. NOTIFY is delivered at
-- commit and identical notifications in one transaction collapse into one, so a
-- batch of starts costs listeners a single wake-up.
CREATE FUNCTION waymark_notify_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('waymark_runs', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER waymark_runs_notify_due
    AFTER INSERT OR UPDATE OF status ON waymark_runs
    FOR EACH ROW WHEN (NEW.status = 'pending')
    EXECUTE FUNCTION waymark_notify_due();
