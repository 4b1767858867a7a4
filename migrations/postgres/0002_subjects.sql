-- Data subjects. The caller's identifier is never stored: the index is keyed by
-- HMAC-SHA256(index key, identifier), and maps to a random handle.
CREATE TABLE subject_index (
    index_mac  BYTEA  PRIMARY KEY,     -- HMAC-SHA256(index key, identifier), 32 bytes
    handle     BYTEA  NOT NULL UNIQUE, -- random 16-byte subject handle, as in entries.subject
    created_at BIGINT NOT NULL         -- microseconds since the Unix epoch, UTC
);

-- Erasure receipts, so that a repeated erasure request returns the first receipt. Keyed by a
-- separate HMAC derivation of the identifier; kept only until `expires_at`, then deleted.
CREATE TABLE erasure_tombstones (
    tombstone_mac BYTEA  PRIMARY KEY, -- HMAC-SHA256(index key, tombstone domain || identifier)
    receipt       TEXT   NOT NULL,    -- the signed receipt as returned, JSON
    expires_at    BIGINT NOT NULL     -- microseconds since the Unix epoch, UTC
);

-- Every erased handle, for good: which erasure entry destroyed its key.
CREATE TABLE erased_subjects (
    handle      BYTEA  PRIMARY KEY, -- 16-byte subject handle
    erasure_seq BIGINT NOT NULL,    -- seq of the SubjectErased entry
    erased_at   BIGINT NOT NULL     -- microseconds since the Unix epoch, UTC
);
