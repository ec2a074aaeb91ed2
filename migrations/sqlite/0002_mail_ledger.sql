-- The mail ledger: the same table as migrations/postgres/0002_mail_ledger.sql (see
-- there for what the columns mean). Timestamps are integer milliseconds since the Unix
-- epoch (UTC).

CREATE TABLE waymark_mail_ledger (
    idempotency_key  TEXT    PRIMARY KEY NOT NULL,
    message_id       TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    transport        TEXT    NOT NULL,
    recipients       TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    claimed_until    INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    sent_at          INTEGER,

    CONSTRAINT waymark_mail_ledger_status_known CHECK (status IN ('sending', 'sent')),
    CONSTRAINT waymark_mail_ledger_sent_iff_sent_at CHECK ((status = 'sent') = (sent_at IS NOT NULL)),
    CONSTRAINT waymark_mail_ledger_sent_unclaimed CHECK (status = 'sending' OR claimed_until IS NULL)
);

CREATE INDEX waymark_mail_ledger_created ON waymark_mail_ledger (created_at);
