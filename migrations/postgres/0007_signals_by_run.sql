-- `GET /v1/runs/{id}/signals` pages through a run's signals by id; without this index
-- every page (and every cascade from a deleted run) reads the whole signals table.
CREATE INDEX waymark_signals_run ON waymark_signals (run_id, id);
