-- How many of a run's signals are queued, kept by the database itself on every insert,
-- status change and delete of a signal.
--
-- Why on the run's row: the one-statement commit may end a run only when no signal is
-- queued (an ending must record queued signals as unconsumed, which that statement
-- cannot). A `NOT EXISTS` over waymark_signals in that statement reads the statement's
-- snapshot and misses a signal committed while it waited for the run's row lock. A
-- column of the row itself is re-read after that wait (READ COMMITTED re-checks the
-- WHERE clause against the newest row version), and delivering a signal writes this
-- column under the row lock, so the check sees every signal committed before it.
ALTER TABLE waymark_runs ADD COLUMN signals_queued integer NOT NULL DEFAULT 0
    CHECK (signals_queued >= 0);

UPDATE waymark_runs r SET signals_queued = q.n
FROM (SELECT run_id, count(*) AS n FROM waymark_signals WHERE status = 'queued' GROUP BY run_id) q
WHERE r.id = q.run_id;

CREATE FUNCTION waymark_signals_queued_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The common update (consumed, or unconsumed at an ending) changes one run by one;
    -- moving a queued signal to another run (continue-as-new) changes two.
    IF TG_OP = 'UPDATE' AND OLD.run_id = NEW.run_id
       AND (OLD.status = 'queued') = (NEW.status = 'queued') THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' AND OLD.status = 'queued' THEN
        UPDATE waymark_runs SET signals_queued = signals_queued - 1 WHERE id = OLD.run_id;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.status = 'queued' THEN
        UPDATE waymark_runs SET signals_queued = signals_queued + 1 WHERE id = NEW.run_id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER waymark_signals_queued_count
    AFTER INSERT OR UPDATE OF status, run_id OR DELETE ON waymark_signals
    FOR EACH ROW EXECUTE FUNCTION waymark_signals_queued_count();
