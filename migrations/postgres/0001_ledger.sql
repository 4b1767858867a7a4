-- The ledger: one row per entry, append-only. Every column but `payload` is covered by
-- `entry_hash` (payload through `payload_digest`); docs/FORMAT.md gives the encoding.
CREATE TABLE entries (
    seq            BIGINT PRIMARY KEY CHECK (seq >= 0),      -- global position, dense from 0
    stream_id      TEXT   NOT NULL,                          -- aggregate the event belongs to
    stream_version BIGINT NOT NULL CHECK (stream_version >= 0), -- position in the stream, from 0
    event_type     TEXT   NOT NULL,                          -- e.g. PaymentInitiated
    schema_version BIGINT NOT NULL,                          -- version of the event type's schema
    subject        BYTEA,                                    -- 16-byte subject handle, or NULL
    recorded_at    BIGINT NOT NULL,                          -- microseconds since the Unix epoch, UTC
    metadata       TEXT   NOT NULL,                          -- JSON object of strings, keys sorted
    payload        BYTEA,                                    -- sealed payload (AES-256-GCM)
    payload_digest BYTEA  NOT NULL,                          -- SHA-256 of payload
    prev_hash      BYTEA  NOT NULL,                          -- entry_hash of seq - 1
    entry_hash     BYTEA  NOT NULL,                          -- SHA-256 of the canonical encoding
    signature      BYTEA  NOT NULL,                          -- Ed25519 over the entry-hash message
    key_id         TEXT   NOT NULL                           -- signing key id, 16 hex digits
);

-- Optimistic concurrency: one event per stream position, enforced by the database itself.
CREATE UNIQUE INDEX entries_stream_version ON entries (stream_id, stream_version);
-- Subject access and erasure look events up by handle.
CREATE INDEX entries_subject ON entries (subject) WHERE subject IS NOT NULL;

-- Append-only: the database refuses edits and deletions, so a bug cannot rewrite history.
-- (An attacker with write access can drop these; verification catches that.)
CREATE FUNCTION auditledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% are append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
    FOR EACH ROW EXECUTE FUNCTION auditledger_append_only();
CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION auditledger_append_only();

-- The key vault: data keys, each stored only wrapped under the key-encryption key.
CREATE TABLE data_keys (
    key_ref    BYTEA  PRIMARY KEY, -- kind byte (0 system, 1 subject) + 16-byte id or handle
    wrapped    BYTEA  NOT NULL,    -- nonce || AES-256-GCM(KEK, key), bound to key_ref
    kek_id     TEXT   NOT NULL,    -- id of the KEK that wrapped it (rotation progress)
    created_at BIGINT NOT NULL     -- microseconds since the Unix epoch, UTC
);

-- Public signing keys, so that readers and exports can name them with their validity.
CREATE TABLE signing_keys (
    key_id     TEXT   PRIMARY KEY, -- 16 hex digits
    public_key BYTEA  NOT NULL,    -- 32-byte Ed25519 public key
    first_seq  BIGINT,             -- first entry it signed; NULL until it signs one
    created_at BIGINT NOT NULL     -- microseconds since the Unix epoch, UTC
);
