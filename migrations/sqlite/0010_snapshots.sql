-- Aggregate snapshots: client-built states of a stream at a version, sealed under the keys of
-- the stream's subjects (src/snapshot.rs), and the list of those keys' references (bound into
-- the sealing). Not part of the chain; may be deleted at any time.
CREATE TABLE snapshots (
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL CHECK (stream_version >= 0),
    sealed         BLOB    NOT NULL,
    keys           BLOB    NOT NULL,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (stream_id, stream_version)
);
