-- Durable named subscriptions (src/subscription.rs, durable): every seq below `position` is
-- acknowledged; leases are the ranges handed to consumers and not yet folded into it.
CREATE TABLE subscriptions (
    name          TEXT    PRIMARY KEY,
    stream_prefix TEXT,
    event_type    TEXT,
    position      INTEGER  NOT NULL CHECK (position >= 0),
    version       INTEGER  NOT NULL,
    created_at    INTEGER  NOT NULL
);
CREATE TABLE subscription_leases (
    name       TEXT    NOT NULL REFERENCES subscriptions (name),
    lease_id   TEXT    NOT NULL,
    from_seq   INTEGER  NOT NULL,
    to_seq     INTEGER  NOT NULL,
    expires_at INTEGER  NOT NULL,
    acked      INTEGER NOT NULL,
    PRIMARY KEY (name, lease_id)
);
