-- Cleaning the live files after an erasure, done by a background task outside the writer and
-- retried until it succeeds (also at start-up, after a crash between the erasure's commit and
-- the cleanup). Erasures recorded before this migration start uncleaned: the first start cleans
-- once for all of them.
ALTER TABLE erased_subjects ADD COLUMN cleaned_at INTEGER NULL;  -- microseconds since the Unix epoch, UTC: when the WAL was truncated past this erasure (no live file holds the destroyed rows any longer); NULL until then
ALTER TABLE erased_subjects ADD COLUMN cleanup_xid INTEGER NULL; -- PostgreSQL only (the erasure's transaction id); always NULL here

-- The cleaner's look-up of erasures not yet cleaned (0005 indexes erasure_seq itself, uniquely).
CREATE INDEX erased_subjects_uncleaned ON erased_subjects (erasure_seq) WHERE cleaned_at IS NULL;
