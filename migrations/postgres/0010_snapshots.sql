-- Aggregate snapshots: client-built states of a stream at a version, sealed under the keys of
-- the stream's subjects (src/snapshot.rs), and the list of those keys' references (bound into
-- the sealing). Not part of the chain; may be deleted at any time.
CREATE TABLE snapshots (
    stream_id      TEXT   NOT NULL,
    stream_version BIGINT NOT NULL CHECK (stream_version >= 0),
    sealed         BYTEA  NOT NULL,
    keys           BYTEA  NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (stream_id, stream_version)
);
