-- Read models folded from the log (src/projections.rs): rebuildable at any time with
-- `auditledger rebuild-projections`; not part of the chain.
CREATE TABLE projection_positions (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL CHECK (position >= 0)
);
INSERT INTO projection_positions (name, position) VALUES ('read_models', 0);
CREATE TABLE stream_catalogue (
    stream_id        TEXT PRIMARY KEY,
    events           INTEGER NOT NULL,
    first_seq        INTEGER NOT NULL,
    last_seq         INTEGER NOT NULL,
    last_version     INTEGER NOT NULL,
    last_recorded_at INTEGER NOT NULL
);
CREATE TABLE subject_streams (
    subject   BLOB NOT NULL,
    stream_id TEXT NOT NULL,
    events    INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    PRIMARY KEY (subject, stream_id)
);
CREATE TABLE type_day_counts (
    event_type TEXT NOT NULL,
    day        TEXT NOT NULL,
    events     INTEGER NOT NULL,
    PRIMARY KEY (event_type, day)
);
