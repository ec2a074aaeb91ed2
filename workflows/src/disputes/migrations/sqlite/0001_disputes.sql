-- payment_dispute's tables (SQLite: times are Unix milliseconds, ids and JSON text). Amounts are integers in the currency's minor unit.

-- One row per dispute the processor told us about, with the newest state its events
-- carried (events older than `last_event_at` are recorded but never applied).
CREATE TABLE disputes (
    tenant TEXT NOT NULL,
    dispute_id TEXT NOT NULL,
    charge TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount >= 0),
    currency TEXT NOT NULL CHECK (length(currency) = 3 AND currency = upper(currency)),
    reason TEXT NOT NULL,
    network_status TEXT NOT NULL
        CHECK (network_status IN ('needs_response', 'under_review', 'won', 'lost')),
    status TEXT NOT NULL DEFAULT 'opened'
        CHECK (status IN ('opened', 'awaiting_evidence', 'review', 'submitting',
                          'awaiting_decision', 'escalated', 'on_hold', 'won', 'lost', 'closed')),
    evidence_due_by INTEGER NOT NULL,
    cycle INTEGER NOT NULL DEFAULT 1 CHECK (cycle IN (1, 2)),
    merchant_email TEXT NOT NULL,
    merchant_name TEXT,
    run_id TEXT,
    outcome_reason TEXT,
    last_event_id TEXT NOT NULL,
    last_event_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, dispute_id)
);
CREATE INDEX disputes_by_status ON disputes (tenant, status, dispute_id);

-- Every webhook accepted, raw, before its effect; the event id is unique per tenant.
CREATE TABLE disputes_webhook_inbox (
    tenant TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    dispute_id TEXT NOT NULL,
    event_created INTEGER NOT NULL,
    raw_body TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    -- NULL until its effect is committed: a redelivery then applies it again.
    outcome TEXT CHECK (outcome IN ('started', 'applied', 'stale', 'dead_letter', 'replayed')),
    processed_at INTEGER,
    PRIMARY KEY (tenant, event_id)
);

-- Events that named no known dispute, or a closed one: kept for an operator to replay.
CREATE TABLE disputes_dead_letters (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    dispute_id TEXT NOT NULL,
    why TEXT NOT NULL,
    raw_body TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    replayed_at INTEGER,
    replayed_by TEXT,
    UNIQUE (tenant, event_id)
);
CREATE INDEX disputes_dead_letters_by_tenant ON disputes_dead_letters (tenant, id);

-- Signing secrets, sealed under the master key. A rolled secret keeps working until
-- `expires_at`; the current one has none.
CREATE TABLE disputes_webhook_secrets (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    sealed TEXT NOT NULL,
    master_key_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX disputes_webhook_secrets_by_tenant ON disputes_webhook_secrets (tenant);

CREATE TABLE disputes_settings (
    tenant TEXT PRIMARY KEY,
    safety_margin_seconds INTEGER NOT NULL DEFAULT 86400 CHECK (safety_margin_seconds >= 0),
    -- {"USD": 100000, …}: disputes at or above wait for an operator's approval.
    approval_thresholds TEXT NOT NULL DEFAULT '{}',
    updated_at INTEGER NOT NULL
);

CREATE TABLE disputes_evidence_files (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    dispute_id TEXT NOT NULL,
    cycle INTEGER NOT NULL,
    content_type TEXT NOT NULL
        CHECK (content_type IN ('application/pdf', 'image/png', 'image/jpeg', 'text/plain')),
    size INTEGER NOT NULL CHECK (size > 0),
    sha256 TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    FOREIGN KEY (tenant, dispute_id) REFERENCES disputes (tenant, dispute_id)
);
CREATE INDEX disputes_evidence_files_by_dispute ON disputes_evidence_files (tenant, dispute_id, cycle);

-- The evidence submitted for a cycle (its text fields and file ids).
CREATE TABLE disputes_evidence (
    tenant TEXT NOT NULL,
    dispute_id TEXT NOT NULL,
    cycle INTEGER NOT NULL,
    fields TEXT NOT NULL,
    file_ids TEXT NOT NULL,
    submitted_at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    PRIMARY KEY (tenant, dispute_id, cycle),
    FOREIGN KEY (tenant, dispute_id) REFERENCES disputes (tenant, dispute_id)
);

CREATE TABLE disputes_funds (
    tenant TEXT NOT NULL,
    event_id TEXT NOT NULL,
    dispute_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('withdrawn', 'reinstated')),
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (tenant, event_id),
    FOREIGN KEY (tenant, dispute_id) REFERENCES disputes (tenant, dispute_id)
);

-- What happened to a dispute and who did it: a webhook event id, an operator's key,
-- or a timer.
CREATE TABLE disputes_timeline (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    dispute_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    what TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX disputes_timeline_by_dispute ON disputes_timeline (tenant, dispute_id, id);
