-- Reads by time (time travel, `from_time`/`to_time`): `recorded_at` never decreases along the
-- chain, so the first entry at or after a time is found by this index in one probe.
CREATE INDEX entries_recorded_at ON entries (recorded_at, seq);
-- Reads of the global log by event type, in seq order.
CREATE INDEX entries_event_type ON entries (event_type, seq);
