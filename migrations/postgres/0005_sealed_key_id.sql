-- Which master key sealed a key's secret: the first 8 bytes of the master key's
-- SHA-256, in hex (never the key). A process with another master key refuses to open
-- the secret, and keeps it, rather than lose it. NULL for secrets sealed before this
-- column existed.
ALTER TABLE waymark_keys ADD COLUMN sealed_master_key_id text;
