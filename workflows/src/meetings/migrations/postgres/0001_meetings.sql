-- Meetings: the meeting (its iCalendar description as JSON, its UID and SEQUENCE),
-- its attendees with their answers, the outbox of mail its run sends, the per-attendee
-- feed tokens, and the installation's RSVP signing secret.
CREATE TABLE meeting_secrets (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    rsvp_key TEXT NOT NULL
);
INSERT INTO meeting_secrets (id, rsvp_key)
VALUES (1, replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', ''));

CREATE TABLE meetings (
    id UUID PRIMARY KEY,
    tenant TEXT NOT NULL,
    run_id UUID,
    uid TEXT NOT NULL UNIQUE,
    sequence BIGINT NOT NULL CHECK (sequence >= 0),
    status TEXT NOT NULL CHECK (status IN ('scheduled', 'cancelled', 'completed')),
    spec JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX meetings_tenant ON meetings (tenant, id);

CREATE TABLE meeting_attendees (
    id UUID PRIMARY KEY,
    meeting_id UUID NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
    email TEXT NOT NULL,
    name TEXT,
    timezone TEXT,
    partstat TEXT NOT NULL CHECK (partstat IN ('needs-action', 'accepted', 'tentative', 'declined')),
    removed BOOLEAN NOT NULL DEFAULT FALSE,
    answered_at TIMESTAMPTZ,
    UNIQUE (meeting_id, email)
);
CREATE INDEX meeting_attendees_email ON meeting_attendees (email);

CREATE TABLE meeting_outbox (
    id UUID PRIMARY KEY,
    meeting_id UUID NOT NULL REFERENCES meetings (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('request', 'cancel', 'answer')),
    attendee_id UUID,
    sequence BIGINT NOT NULL,
    detail JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    sent_at TIMESTAMPTZ
);
CREATE INDEX meeting_outbox_unsent ON meeting_outbox (meeting_id, created_at) WHERE sent_at IS NULL;

CREATE TABLE meeting_feeds (
    id UUID PRIMARY KEY,
    tenant TEXT NOT NULL,
    email TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);
