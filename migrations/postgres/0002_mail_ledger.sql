-- The mail ledger: one row per message a step asked the mailer to send, keyed by the
-- step's idempotency key (run, visit, call). It makes a retried step send at most one
-- message per key, across restarts and workers (waymark-services, mail/ledger.rs).
--
-- A row is 'sending' from the moment an attempt is about to hand the message to the
-- transport until the transport accepted it ('sent'). An attempt claims the row until
-- `claimed_until`, so a second worker running the same visit (after a lost lease)
-- waits instead of sending in parallel; a crashed attempt's claim simply expires.

CREATE TABLE waymark_mail_ledger (
    idempotency_key  text        PRIMARY KEY,
    -- Derived from the key, the same on every attempt: receivers can drop a duplicate
    -- that the crash window (accepted by SMTP, ledger not yet updated) may cause.
    message_id       text        NOT NULL,
    status           text        NOT NULL,
    transport        text        NOT NULL,
    -- For operators: who it was for and what it said.
    recipients       text        NOT NULL,
    subject          text        NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    claimed_until    timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    sent_at          timestamptz,

    CONSTRAINT waymark_mail_ledger_status_known CHECK (status IN ('sending', 'sent')),
    CONSTRAINT waymark_mail_ledger_sent_iff_sent_at CHECK ((status = 'sent') = (sent_at IS NOT NULL)),
    CONSTRAINT waymark_mail_ledger_sent_unclaimed CHECK (status = 'sending' OR claimed_until IS NULL)
);

CREATE INDEX waymark_mail_ledger_created ON waymark_mail_ledger (created_at);
