-- The Merkle tree (RFC 6962) over entries in seq order. Every perfect subtree of height >= 1
-- is stored when its last leaf is appended; leaves (height 0) are SHA-256(0x00 || entry_hash)
-- and are computed from `entries`. Any proof for any tree size reads O(log n) rows.
CREATE TABLE merkle_nodes (
    level INTEGER NOT NULL CHECK (level >= 1), -- height above the leaves
    idx   INTEGER NOT NULL CHECK (idx >= 0),   -- covers leaves [idx << level, (idx + 1) << level)
    hash  BLOB    NOT NULL,                    -- 32-byte node hash
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

-- Signed tree heads, at most one per tree size. Append-only, like entries.
CREATE TABLE checkpoints (
    tree_size       INTEGER PRIMARY KEY CHECK (tree_size >= 0), -- entries covered
    root_hash       BLOB    NOT NULL, -- Merkle root over entries [0, tree_size)
    last_entry_hash BLOB    NOT NULL, -- entry_hash of entry tree_size - 1
    timestamp       INTEGER NOT NULL, -- microseconds since the Unix epoch, UTC
    key_id          TEXT    NOT NULL, -- signing key id, 16 hex digits
    signature       BLOB    NOT NULL  -- Ed25519 over the checkpoint message (docs/FORMAT.md)
);

CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN
    SELECT RAISE(ABORT, 'checkpoints are append-only');
END;
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN
    SELECT RAISE(ABORT, 'checkpoints are append-only');
END;
