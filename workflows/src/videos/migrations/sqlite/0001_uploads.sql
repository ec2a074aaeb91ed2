-- Resumable uploads (see the PostgreSQL migration): ids as text, times as Unix
-- milliseconds, JSON as text.
CREATE TABLE video_uploads (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    length INTEGER NOT NULL CHECK (length >= 0),
    upload_offset INTEGER NOT NULL CHECK (upload_offset >= 0 AND upload_offset <= length),
    metadata TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('uploading', 'complete')),
    s3_upload_id TEXT,
    parts TEXT NOT NULL,
    parts_bytes INTEGER NOT NULL CHECK (parts_bytes >= 0 AND parts_bytes <= upload_offset),
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    completed_at INTEGER,
    CHECK ((status = 'complete') = (completed_at IS NOT NULL))
);
CREATE INDEX video_uploads_tenant ON video_uploads (tenant, id);
CREATE INDEX video_uploads_expiry ON video_uploads (expires_at) WHERE status = 'uploading';
