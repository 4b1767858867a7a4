-- Exactly-once appends (issue 10). A client may send an `Idempotency-Key` with an append; the key
-- is recorded in the append's own transaction, so a retry (after a timeout, a crash, a lost
-- connection, on any instance) finds it and gets the original result instead of a duplicate.
-- Rows are deleted once older than the configured window (default 24 hours).
CREATE TABLE idempotency_keys (
    key_hash       BYTEA PRIMARY KEY,  -- SHA-256 of the client's key (the key itself is not kept: clients may put anything in it)
    request_digest BYTEA NOT NULL,     -- SHA-256 of the request's clear parts (stream, expectation, types, versions, metadata, which events have a subject); data and subjects are compared by opening the stored entries, never digested here
    first_seq      BIGINT NOT NULL,    -- the append's entries: first_seq..=last_seq
    last_seq       BIGINT NOT NULL,
    created_at     BIGINT NOT NULL     -- microseconds since the Unix epoch, UTC: the append's commit
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- Recovery from a failed write (a lost connection, a full disk): while the service cannot
-- write, it retries a small write here every second and is ready again once one commits.
-- Always empty after each probe.
CREATE TABLE write_probe (
    id  BIGINT PRIMARY KEY,
    pad BYTEA NOT NULL
);
