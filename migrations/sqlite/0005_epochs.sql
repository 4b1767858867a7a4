-- KEK epochs (docs/ERASURE.md): every data key, subject link and tombstone is wrapped under the
-- KEK of an epoch; an epoch ends when its KEK file is destroyed, and with it every copy of what
-- it wrapped (WAL, backups, replicas) becomes unreadable.
CREATE TABLE kek_epochs (
    epoch        INTEGER PRIMARY KEY CHECK (epoch >= 1), -- 1, 2, ...; the highest is current
    kek_id       TEXT    NOT NULL UNIQUE,                -- id of the epoch's KEK (keys/epochs/<epoch>.kek)
    started_at   INTEGER NOT NULL,                       -- microseconds since the Unix epoch, UTC
    rotate_by    INTEGER NOT NULL,                       -- when the next epoch is due to start (fixed at start)
    destroyed_at INTEGER                                 -- when its KEK was destroyed; NULL while it lives
);

-- Which instance may rotate now (one at a time); a lease that lapses if its holder dies.
CREATE TABLE kek_rotation_lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT    NOT NULL,  -- random id of the instance holding it
    expires_at INTEGER NOT NULL   -- microseconds since the Unix epoch, UTC
);

-- The subject index, with the handle sealed under the epoch's KEK: the identifier's HMAC
-- names the handle only while that epoch lives. Replaces subject_index, whose rows the service
-- moves here (sealing them) at its first start after this migration. No creation time and
-- (SQLite) no rowid: nothing in a copy may tell which link was made with which subject's first
-- event, or the link would outlive the epoch.
CREATE TABLE subject_links (
    index_mac     BLOB   PRIMARY KEY, -- HMAC-SHA256(index key, identifier), 32 bytes
    sealed_handle BLOB   NOT NULL,    -- nonce || AES-256-GCM(epoch KEK, handle, aad = domain || index_mac)
    kek_id        TEXT    NOT NULL     -- the epoch KEK that seals it
) WITHOUT ROWID;

-- Tombstones now keep the receipt sealed under the epoch's KEK, and die with the epoch at the
-- latest. The old plaintext receipts linked identifiers to handles: they are dropped (the
-- receipt of every erasure stays available by seq and by request reference). The expiry is
-- sealed too: an expiry in clear (erasure time + window) would name the erasure, hence the
-- handle, for the identifier's tombstone MAC.
DROP TABLE erasure_tombstones;
CREATE TABLE erasure_tombstones (
    tombstone_mac  BLOB   PRIMARY KEY, -- HMAC-SHA256(index key, tombstone domain || identifier)
    sealed_receipt BLOB   NOT NULL,    -- nonce || AES-256-GCM(epoch KEK, {"expires_at","receipt"} JSON, aad = domain || tombstone_mac)
    kek_id         TEXT    NOT NULL     -- the epoch KEK that seals it
) WITHOUT ROWID;

-- What an erasure's status and its receipt are rebuilt from, whatever the tombstone setting.
ALTER TABLE erased_subjects ADD COLUMN request_ref TEXT;          -- the caller's reference (no personal data)
ALTER TABLE erased_subjects ADD COLUMN epoch INTEGER;             -- the epoch current at the erasure
ALTER TABLE erased_subjects ADD COLUMN forgotten_by INTEGER;      -- promised end of that epoch, µs
ALTER TABLE erased_subjects ADD COLUMN receipt_key_id TEXT;       -- key that signed the receipt
ALTER TABLE erased_subjects ADD COLUMN receipt_signature BLOB;    -- the receipt's signature
CREATE INDEX erased_subjects_request_ref ON erased_subjects (request_ref);
CREATE UNIQUE INDEX erased_subjects_seq ON erased_subjects (erasure_seq);
