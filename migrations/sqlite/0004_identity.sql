-- Format v2 (docs/FORMAT.md): every entry and checkpoint binds the ledger's identity, and each
-- checkpoint names its predecessor. Rows written before this migration stay legacy v1 (NULL).
ALTER TABLE entries ADD COLUMN ledger_id BLOB;                 -- 16-byte ledger id (v2); NULL: legacy v1 entry
ALTER TABLE checkpoints ADD COLUMN ledger_id BLOB;             -- 16-byte ledger id (v2); NULL: legacy v1 checkpoint
ALTER TABLE checkpoints ADD COLUMN previous_tree_size INTEGER; -- tree size of the previous checkpoint (v2)

-- Where each signing key's range ends: the seq of the rotation entry that retired it.
ALTER TABLE signing_keys ADD COLUMN last_seq INTEGER;          -- NULL while the key is current

-- The ledger's identity, fixed at its first start; also kept in the keys directory
-- (ledger.id), which is what the service trusts: the two must agree.
CREATE TABLE ledger_meta (
    name  TEXT PRIMARY KEY, -- 'ledger_id'
    value BLOB NOT NULL     -- 16 random bytes
);
