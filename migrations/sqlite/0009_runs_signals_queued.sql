-- How many of a run's signals are queued, kept by the database itself on every insert,
-- status change and delete of a signal. PostgreSQL's one-statement commit reads it to
-- know it may end a run (see the PostgreSQL migration of the same number); SQLite keeps
-- the same column so both stores have one schema and the conformance suite checks it.
ALTER TABLE waymark_runs ADD COLUMN signals_queued INTEGER NOT NULL DEFAULT 0
    CHECK (signals_queued >= 0);

UPDATE waymark_runs SET signals_queued =
    (SELECT count(*) FROM waymark_signals s WHERE s.run_id = waymark_runs.id AND s.status = 'queued');

CREATE TRIGGER waymark_signals_queued_insert AFTER INSERT ON waymark_signals
WHEN NEW.status = 'queued'
BEGIN
    UPDATE waymark_runs SET signals_queued = signals_queued + 1 WHERE id = NEW.run_id;
END;

-- A status change moves one run's count; moving a queued signal to another run
-- (continue-as-new) moves two.
CREATE TRIGGER waymark_signals_queued_update_from AFTER UPDATE OF status, run_id ON waymark_signals
WHEN OLD.status = 'queued' AND (NEW.status <> 'queued' OR NEW.run_id <> OLD.run_id)
BEGIN
    UPDATE waymark_runs SET signals_queued = signals_queued - 1 WHERE id = OLD.run_id;
END;

CREATE TRIGGER waymark_signals_queued_update_to AFTER UPDATE OF status, run_id ON waymark_signals
WHEN NEW.status = 'queued' AND (OLD.status <> 'queued' OR NEW.run_id <> OLD.run_id)
BEGIN
    UPDATE waymark_runs SET signals_queued = signals_queued + 1 WHERE id = NEW.run_id;
END;

CREATE TRIGGER waymark_signals_queued_delete AFTER DELETE ON waymark_signals
WHEN OLD.status = 'queued'
BEGIN
    UPDATE waymark_runs SET signals_queued = signals_queued - 1 WHERE id = OLD.run_id;
END;
