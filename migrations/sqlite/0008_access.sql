-- Access control, legal holds and reports (issue 11).

-- API tokens. The token itself is never stored: only SHA-256 of its secret part, compared in
-- constant time. A revoked or expired row stays (the access report names tokens by id).
CREATE TABLE api_tokens (
    id               TEXT PRIMARY KEY,      -- 16 hex digits, the public part of the token
    name             TEXT NOT NULL,
    secret_hash      BLOB NOT NULL,         -- SHA-256(domain || secret)
    roles            TEXT NOT NULL,         -- comma-separated role names
    stream_prefixes  TEXT NOT NULL,         -- newline-separated; empty: every stream
    created_at       INTEGER NOT NULL,      -- microseconds since the Unix epoch, UTC
    created_by       TEXT NOT NULL,         -- token id of the admin, or `cli`
    expires_at       INTEGER,
    revoked_at       INTEGER,
    revoked_by       TEXT,
    -- Whether the creation / revocation has been appended to the ledger as an access entry
    -- (the service does it, also for changes made with the CLI while it was stopped).
    create_recorded  INTEGER NOT NULL DEFAULT 0,
    revoke_recorded  INTEGER NOT NULL DEFAULT 0
);

-- Subjects under a legal hold (GDPR Art. 17(3)): an erasure of one is refused. The ledger
-- entries `LegalHoldPlaced` / `LegalHoldReleased` are the record; this table is the index the
-- erasure checks inside its own transaction.
CREATE TABLE legal_holds (
    subject    BLOB PRIMARY KEY,           -- the subject's handle
    hold_seq   INTEGER NOT NULL,           -- seq of its LegalHoldPlaced entry
    reference  TEXT NOT NULL,              -- the case reference
    placed_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- Signed compliance reports as handed out, by the SHA-256 of their JSON: a CSV or HTML report
-- names the signed JSON by this hash, and `GET /v1/audit/reports/signed/{sha256}` returns it.
CREATE TABLE signed_reports (
    sha256      BLOB PRIMARY KEY,
    kind        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    body        BLOB NOT NULL
) WITHOUT ROWID;
