-- Data subjects. The caller's identifier (an e-mail, a customer id) is never stored: the index
-- is keyed by HMAC-SHA256(index key, identifier), and maps to a random handle.
CREATE TABLE subject_index (
    index_mac  BLOB    PRIMARY KEY,      -- HMAC-SHA256(index key, identifier), 32 bytes
    handle     BLOB    NOT NULL UNIQUE,  -- random 16-byte subject handle, as in entries.subject
    created_at INTEGER NOT NULL          -- microseconds since the Unix epoch, UTC
);

-- Erasure receipts, so that a repeated erasure request returns the first receipt. Keyed by a
-- separate HMAC derivation of the identifier; kept only until `expires_at`, then deleted
-- (with secure_delete on), because while it exists it links the identifier to the handle.
CREATE TABLE erasure_tombstones (
    tombstone_mac BLOB    PRIMARY KEY,  -- HMAC-SHA256(index key, tombstone domain || identifier)
    receipt       TEXT    NOT NULL,     -- the signed receipt as returned, JSON
    expires_at    INTEGER NOT NULL      -- microseconds since the Unix epoch, UTC
);

-- Every erased handle, for good: which erasure entry destroyed its key. Lets verification see
-- a destroyed key restored from a backup (a data_keys row for an erased handle).
CREATE TABLE erased_subjects (
    handle      BLOB    PRIMARY KEY,   -- 16-byte subject handle
    erasure_seq INTEGER NOT NULL,      -- seq of the SubjectErased entry
    erased_at   INTEGER NOT NULL       -- microseconds since the Unix epoch, UTC
);
