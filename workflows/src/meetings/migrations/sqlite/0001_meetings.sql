-- Meetings (see the PostgreSQL migration): ids as text, times as Unix milliseconds,
-- JSON as text, booleans as 0/1.
CREATE TABLE meeting_secrets (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rsvp_key TEXT NOT NULL
);
INSERT INTO meeting_secrets (id, rsvp_key) VALUES (1, lower(hex(randomblob(32))));

CREATE TABLE meetings (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    run_id TEXT,
    uid TEXT NOT NULL UNIQUE,
    sequence INTEGER NOT NULL CHECK (sequence >= 0),
    status TEXT NOT NULL CHECK (status IN ('scheduled', 'cancelled', 'completed')),
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX meetings_tenant ON meetings (tenant, id);

CREATE TABLE meeting_attendees (
    id TEXT PRIMARY KEY,
    meeting_id TEXT NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
    email TEXT NOT NULL,
    name TEXT,
    timezone TEXT,
    partstat TEXT NOT NULL CHECK (partstat IN ('needs-action', 'accepted', 'tentative', 'declined')),
    removed INTEGER NOT NULL DEFAULT 0,
    answered_at INTEGER,
    UNIQUE (meeting_id, email)
);
CREATE INDEX meeting_attendees_email ON meeting_attendees (email);

CREATE TABLE meeting_outbox (
    id TEXT PRIMARY KEY,
    meeting_id TEXT NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('request', 'cancel', 'answer')),
    attendee_id TEXT,
    sequence INTEGER NOT NULL,
    detail TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    sent_at INTEGER
);
CREATE INDEX meeting_outbox_unsent ON meeting_outbox (meeting_id, created_at) WHERE sent_at IS NULL;

CREATE TABLE meeting_feeds (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    email TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
