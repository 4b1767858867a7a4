-- Durable named subscriptions (src/subscription.rs, durable): every seq below `position` is
-- acknowledged; leases are the ranges handed to consumers and not yet folded into it.
CREATE TABLE subscriptions (
    name          TEXT    PRIMARY KEY,
    stream_prefix TEXT,
    event_type    TEXT,
    position      BIGINT  NOT NULL CHECK (position >= 0),
    version       BIGINT  NOT NULL,
    created_at    BIGINT  NOT NULL
);
CREATE TABLE subscription_leases (
    name       TEXT    NOT NULL REFERENCES subscriptions (name),
    lease_id   TEXT    NOT NULL,
    from_seq   BIGINT  NOT NULL,
    to_seq     BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL,
    acked      INTEGER NOT NULL,
    PRIMARY KEY (name, lease_id)
);
