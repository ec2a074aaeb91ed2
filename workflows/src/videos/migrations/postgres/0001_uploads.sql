-- Resumable uploads (tus 1.0): one row per upload, holding how far it got and where
-- its bytes are staged. On the local store the bytes are a staging file; on S3 they are
-- an S3 multipart upload (`s3_upload_id`, completed `parts`) plus the bytes of a part
-- not yet full, kept as a blob named after the offset it ends at (so a process dying
-- between writing a new buffer and recording it leaves the recorded one intact).
CREATE TABLE video_uploads (
    id UUID PRIMARY KEY,
    tenant TEXT NOT NULL,
    length BIGINT NOT NULL CHECK (length >= 0),
    upload_offset BIGINT NOT NULL CHECK (upload_offset >= 0 AND upload_offset <= length),
    metadata JSONB NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('uploading', 'complete')),
    s3_upload_id TEXT,
    parts JSONB NOT NULL,
    parts_bytes BIGINT NOT NULL CHECK (parts_bytes >= 0 AND parts_bytes <= upload_offset),
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ,
    CHECK ((status = 'complete') = (completed_at IS NOT NULL))
);
CREATE INDEX video_uploads_tenant ON video_uploads (tenant, id);
CREATE INDEX video_uploads_expiry ON video_uploads (expires_at) WHERE status = 'uploading';
