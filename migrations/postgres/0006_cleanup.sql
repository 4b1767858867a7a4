-- Cleaning the live tables after an erasure, done by a background task outside the writer and
-- retried until it succeeds (also at start-up, after a crash between the erasure's commit and
-- the cleanup). Erasures recorded before this migration start uncleaned: the first start cleans
-- once for all of them.
ALTER TABLE erased_subjects ADD COLUMN cleaned_at BIGINT NULL;  -- microseconds since the Unix epoch, UTC: when VACUUM removed the destroyed rows, no snapshot that could see them remaining; NULL until then
-- txid_current() of the erasure's own transaction: the default is evaluated by the INSERT in
-- that transaction, whatever columns it names. A snapshot whose xmin is at or before it may
-- still see the deleted rows, and VACUUM keeps them for it. Rows already present get the
-- migration's transaction id, which is later than their erasure: a conservative bound.
ALTER TABLE erased_subjects ADD COLUMN cleanup_xid BIGINT NULL DEFAULT txid_current();

-- The cleaner's look-up of erasures not yet cleaned (0005 indexes erasure_seq itself, uniquely).
CREATE INDEX erased_subjects_uncleaned ON erased_subjects (erasure_seq) WHERE cleaned_at IS NULL;
