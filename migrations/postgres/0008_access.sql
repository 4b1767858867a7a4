-- Access control, legal holds and reports (issue 11).

-- API tokens. The token itself is never stored: only SHA-256 of its secret part, compared in
-- constant time. A revoked or expired row stays (the access report names tokens by id).
CREATE TABLE api_tokens (
    id               TEXT PRIMARY KEY,      -- 16 hex digits, the public part of the token
    name             TEXT NOT NULL,
    secret_hash      BYTEA NOT NULL,         -- SHA-256(domain || secret)
    roles            TEXT NOT NULL,         -- comma-separated role names
    stream_prefixes  TEXT NOT NULL,         -- newline-separated; empty: every stream
    created_at       BIGINT NOT NULL,      -- microseconds since the Unix epoch, UTC
    created_by       TEXT NOT NULL,         -- token id of the admin, or `cli`
    expires_at       BIGINT,
    revoked_at       BIGINT,
    revoked_by       TEXT,
    -- Whether the creation / revocation has been appended to the ledger as an access entry
    -- (the service does it, also for changes made with the CLI while it was stopped).
    create_recorded  BIGINT NOT NULL DEFAULT 0,
    revoke_recorded  BIGINT NOT NULL DEFAULT 0
);

-- Subjects under a legal hold (GDPR Art. 17(3)): an erasure of one is refused. The ledger
-- entries `LegalHoldPlaced` / `LegalHoldReleased` are the record; this table is the index the
-- erasure checks inside its own transaction.
CREATE TABLE legal_holds (
    subject    BYTEA PRIMARY KEY,           -- the subject's handle
    hold_seq   BIGINT NOT NULL,           -- seq of its LegalHoldPlaced entry
    reference  TEXT NOT NULL,              -- the case reference
    placed_at  BIGINT NOT NULL
);

-- Signed compliance reports as handed out, by the SHA-256 of their JSON: a CSV or HTML report
-- names the signed JSON by this hash, and `GET /v1/audit/reports/signed/{sha256}` returns it.
CREATE TABLE signed_reports (
    sha256      BYTEA PRIMARY KEY,
    kind        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    body        BYTEA NOT NULL
);
