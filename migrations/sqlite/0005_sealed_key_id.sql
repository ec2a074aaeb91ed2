-- Which master key sealed a key's secret: the same as migrations/postgres/0005_sealed_key_id.sql.
ALTER TABLE waymark_keys ADD COLUMN sealed_master_key_id TEXT;
