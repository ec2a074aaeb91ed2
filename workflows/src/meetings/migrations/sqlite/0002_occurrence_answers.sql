-- See the PostgreSQL migration: one attendee's answer for one occurrence.
CREATE TABLE meeting_occurrence_answers (
    attendee_id TEXT NOT NULL REFERENCES meeting_attendees (id) ON DELETE CASCADE,
    original TEXT NOT NULL,
    partstat TEXT NOT NULL CHECK (partstat IN ('accepted', 'tentative', 'declined')),
    answered_at INTEGER NOT NULL,
    PRIMARY KEY (attendee_id, original)
);
