-- Who may be waiting for a run to end, so that an ending is announced (pg_notify) only
-- then. PostgreSQL serialises the commits of every transaction that notifies (one lock
-- for the whole cluster, held through the commit's WAL flush): at 16 clients pgbench
-- measured 2,470 transactions/s plain and 550 with one NOTIFY each on the same machine.
--
-- `watched`: a long poll marks its run before reading it. Both that mark and every
-- ending write the run's row, so one of them waits for the other: either the ending
-- sees the mark and notifies, or the waiter's read sees the ending.
ALTER TABLE waymark_runs ADD COLUMN watched boolean NOT NULL DEFAULT false;

-- Processes whose pages follow every ending (the dashboard's live views), each row
-- refreshed while they follow; a lapsed row is ignored, so a crashed process costs
-- nothing after its expiry.
CREATE TABLE waymark_followers (
    process    uuid        PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
