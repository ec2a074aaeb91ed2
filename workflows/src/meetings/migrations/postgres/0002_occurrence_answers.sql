-- An attendee's answer for one occurrence of a series (a calendar REPLY with a
-- RECURRENCE-ID): it overrides the series answer for that occurrence only. The
-- occurrence is named by its original local start, as PATCH and cancel name it.
CREATE TABLE meeting_occurrence_answers (
    attendee_id UUID NOT NULL REFERENCES meeting_attendees (id) ON DELETE CASCADE,
    original TEXT NOT NULL,
    partstat TEXT NOT NULL CHECK (partstat IN ('accepted', 'tentative', 'declined')),
    answered_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (attendee_id, original)
);
