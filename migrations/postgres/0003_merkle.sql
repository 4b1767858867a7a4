-- The Merkle tree (RFC 6962) over entries in seq order. Every perfect subtree of height >= 1
-- is stored when its last leaf is appended; leaves are SHA-256(0x00 || entry_hash).
CREATE TABLE merkle_nodes (
    level INTEGER NOT NULL CHECK (level >= 1), -- height above the leaves
    idx   BIGINT  NOT NULL CHECK (idx >= 0),   -- covers leaves [idx << level, (idx + 1) << level)
    hash  BYTEA   NOT NULL,                    -- 32-byte node hash
    PRIMARY KEY (level, idx)
);

-- Signed tree heads, at most one per tree size. Append-only, like entries.
CREATE TABLE checkpoints (
    tree_size       BIGINT PRIMARY KEY CHECK (tree_size >= 0), -- entries covered
    root_hash       BYTEA  NOT NULL, -- Merkle root over entries [0, tree_size)
    last_entry_hash BYTEA  NOT NULL, -- entry_hash of entry tree_size - 1
    timestamp       BIGINT NOT NULL, -- microseconds since the Unix epoch, UTC
    key_id          TEXT   NOT NULL, -- signing key id, 16 hex digits
    signature       BYTEA  NOT NULL  -- Ed25519 over the checkpoint message (docs/FORMAT.md)
);

CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION auditledger_append_only();
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION auditledger_append_only();
