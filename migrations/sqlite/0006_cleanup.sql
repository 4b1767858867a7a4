-- Cleaning the live files after an erasure, done by a background task outside the writer and
-- retried until it succeeds (also at start-up, after a crash between the erasure's commit and
-- the cleanup). Erasures recorded before this migration start uncleaned: the first start cleans
-- once for all of them.
ALTER TABLE erased_subjects ADD COLUMN cleaned_at INTEGER NULL;  -- microseconds since the Unix epoch, UTC: when the WAL was truncated past this erasure (no live file holds the destroyed rows any longer); NULL until then
ALTER TABLE erased_subjects ADD COLUMN cleanup_xid INTEGER NULL; -- PostgreSQL only (the erasure's transaction id); always NULL here

-- The cleaner's and the other instances' look-ups: erasures not yet cleaned, erasures after a seq.
CREATE INDEX erased_subjects_uncleaned ON erased_subjects (erasure_seq) WHERE cleaned_at IS NULL;
CREATE INDEX erased_subjects_by_seq ON erased_subjects (erasure_seq);
