-- A run's why-waiting line asks which workers are live; this index answers without
-- reading the whole registry (runners also prune workers gone for
-- WAYMARK_WORKER_RETENTION, so the table stays about as large as the fleet).
CREATE INDEX waymark_workers_live ON waymark_workers (last_heartbeat_at) WHERE stopped_at IS NULL;
