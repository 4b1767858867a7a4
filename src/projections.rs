//! The read models kept beside the log: a catalogue of streams, an index of subjects by
//! stream, and counts of events by type and day. Each is a fold of the log in seq order; this
//! module is that fold, pure, so that maintaining them as entries arrive and rebuilding them
//! from scratch are the same computation (a test checks they agree). The store applies a
//! [`Delta`] in one transaction with the position it covers, guarded by the position it
//! started from, so a chunk is counted exactly once whatever crashes or instances run.

use std::collections::BTreeMap;

use crate::entry::{EntryHeader, EventType, Seq, StreamId, SubjectHandle};

/// The read models' one position: every entry below it is counted.
pub const NAME: &str = "read_models";

/// One stream's line in the catalogue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStat {
    /// Events counted.
    pub events: u64,
    /// Its first seq.
    pub first_seq: u64,
    /// Its last seq.
    pub last_seq: u64,
    /// Its last version.
    pub last_version: u64,
    /// When its last event was recorded.
    pub last_recorded_at: i64,
}

/// One subject's line for one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectStat {
    /// Events counted.
    pub events: u64,
    /// Its first seq there.
    pub first_seq: u64,
    /// Its last seq there.
    pub last_seq: u64,
}

/// The part of an entry's header that the read models count. The maintainer reads only these
/// columns (`Store::read_counted`): decoding whole rows (payload, hashes, signature, metadata)
/// only to drop all but these fields was most of its cost under append load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    /// Global position.
    pub seq: Seq,
    /// Stream the event belongs to.
    pub stream_id: StreamId,
    /// Position in that stream.
    pub stream_version: u64,
    /// Event type.
    pub event_type: EventType,
    /// Pseudonymous data subject, if the event has one.
    pub subject: Option<SubjectHandle>,
    /// Server time of the append, microseconds since the Unix epoch, UTC.
    pub recorded_at_micros: i64,
}

impl From<&EntryHeader> for Counted {
    fn from(h: &EntryHeader) -> Self {
        Counted {
            seq: h.seq,
            stream_id: h.stream_id.clone(),
            stream_version: h.stream_version,
            event_type: h.event_type.clone(),
            subject: h.subject,
            recorded_at_micros: h.recorded_at_micros,
        }
    }
}

/// What a chunk of the log adds to the read models.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// By stream id.
    pub streams: BTreeMap<String, StreamStat>,
    /// By (subject handle, stream id).
    pub subjects: BTreeMap<([u8; 16], String), SubjectStat>,
    /// By (event type, UTC day `YYYY-MM-DD`).
    pub type_days: BTreeMap<(String, String), u64>,
}

/// The UTC day of a time, `YYYY-MM-DD`.
#[must_use]
pub fn day(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    time::OffsetDateTime::from_unix_timestamp(secs).map_or_else(
        |_| "0000-00-00".to_owned(),
        |t| format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
    )
}

impl Delta {
    /// Counts one entry (entries come in seq order).
    pub fn add(&mut self, h: &Counted) {
        let seq = h.seq.0;
        let s = self
            .streams
            .entry(h.stream_id.as_str().to_owned())
            .or_insert_with(|| StreamStat {
                first_seq: seq,
                ..StreamStat::default()
            });
        s.events += 1;
        s.last_seq = seq;
        s.last_version = h.stream_version;
        s.last_recorded_at = h.recorded_at_micros;
        if let Some(subject) = h.subject {
            let x = self
                .subjects
                .entry((subject.0, h.stream_id.as_str().to_owned()))
                .or_insert_with(|| SubjectStat {
                    first_seq: seq,
                    ..SubjectStat::default()
                });
            x.events += 1;
            x.last_seq = seq;
        }
        *self
            .type_days
            .entry((h.event_type.as_str().to_owned(), day(h.recorded_at_micros)))
            .or_default() += 1;
    }

    /// Whether it adds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(day(0), "1970-01-01");
        assert_eq!(day(1_795_340_718_123_456), "2026-11-22");
        assert_eq!(day(-1), "1969-12-31");
    }
}
