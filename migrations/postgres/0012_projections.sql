-- Read models folded from the log (src/projections.rs): rebuildable at any time with
-- `auditledger rebuild-projections`; not part of the chain.
CREATE TABLE projection_positions (
    name     TEXT PRIMARY KEY,
    position BIGINT NOT NULL CHECK (position >= 0)
);
INSERT INTO projection_positions (name, position) VALUES ('read_models', 0);
CREATE TABLE stream_catalogue (
    stream_id        TEXT PRIMARY KEY,
    events           BIGINT NOT NULL,
    first_seq        BIGINT NOT NULL,
    last_seq         BIGINT NOT NULL,
    last_version     BIGINT NOT NULL,
    last_recorded_at BIGINT NOT NULL
);
CREATE TABLE subject_streams (
    subject   BYTEA NOT NULL,
    stream_id TEXT NOT NULL,
    events    BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq  BIGINT NOT NULL,
    PRIMARY KEY (subject, stream_id)
);
CREATE TABLE type_day_counts (
    event_type TEXT NOT NULL,
    day        TEXT NOT NULL,
    events     BIGINT NOT NULL,
    PRIMARY KEY (event_type, day)
);
