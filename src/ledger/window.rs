//! Which entries a read may return: time travel (`as_of`), time ranges, type filters and the
//! direction of a page, reduced to one half-open range of seqs plus a cursor. Pure: the only
//! fact taken from the database is where a time falls in the log, which is sound because
//! `recorded_at` never decreases along the chain (verified, `verify::invariants`).
//!
//! Rules, in one place so that an auditor can check them:
//! - `as_of=SEQ` is the log right after entry SEQ was appended: seqs `<= SEQ`.
//! - `as_of=TIME` is the log as it stood at TIME: entries recorded at or before TIME.
//! - `from_time` is inclusive, `to_time` exclusive: `[from_time, to_time)`.
//! - Forward pages continue from the position after the last one returned, backward pages from
//!   the one before it; positions are seqs on the global log and stream versions on a stream,
//!   both of which never change once assigned, so a cursor stays valid while appends continue.

use crate::entry::{EventType, StreamId};

/// A point in the log's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsOf {
    /// Right after this seq was appended.
    Seq(u64),
    /// At this time (microseconds since the Unix epoch, UTC), inclusive.
    Time(i64),
}

/// Which way a page runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first, from the cursor up.
    #[default]
    Forward,
    /// Newest first, from the cursor down ("the last N events").
    Backward,
}

/// Seqs `lo <= seq < hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRange {
    /// First seq admitted.
    pub lo: u64,
    /// First seq no longer admitted.
    pub hi: u64,
}

impl SeqRange {
    /// Every seq.
    pub const ALL: SeqRange = SeqRange {
        lo: 0,
        hi: u64::MAX,
    };

    /// Whether nothing can be in it.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.lo >= self.hi
    }

    /// Whether `seq` is in it.
    #[must_use]
    pub fn contains(&self, seq: u64) -> bool {
        self.lo <= seq && seq < self.hi
    }
}

/// A time bound of a read, resolved by the store to the first seq recorded at or after it
/// (`at_or_after`) or after it (`after`); the log's size when there is none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeSeqs {
    /// `as_of=TIME`: the first seq recorded after TIME.
    pub as_of: Option<u64>,
    /// `from_time`: the first seq recorded at or after it.
    pub from_time: Option<u64>,
    /// `to_time`: the first seq recorded at or after it.
    pub to_time: Option<u64>,
}

/// The seqs a read may return, from its `as_of` and time range.
#[must_use]
pub fn seq_range(as_of: Option<AsOf>, times: TimeSeqs) -> SeqRange {
    let mut range = SeqRange::ALL;
    match as_of {
        Some(AsOf::Seq(seq)) => range.hi = seq.saturating_add(1),
        Some(AsOf::Time(_)) => range.hi = times.as_of.unwrap_or(0),
        None => {}
    }
    if let Some(lo) = times.from_time {
        range.lo = lo;
    }
    if let Some(hi) = times.to_time {
        range.hi = range.hi.min(hi);
    }
    range
}

/// What the store is asked for: the rows of `stream` (or of the whole log), of `event_type` if
/// given, with seq in `seqs`, from the cursor `from` (a stream version on a stream, a seq on
/// the log; `None` is the start in the page's direction), at most `limit`.
#[derive(Clone, Debug)]
pub struct RowFilter {
    /// One stream, or the global log.
    pub stream: Option<StreamId>,
    /// One event type, or all.
    pub event_type: Option<EventType>,
    /// The seqs admitted by `as_of` and the time range.
    pub seqs: SeqRange,
    /// Where the page starts (inclusive).
    pub from: Option<u64>,
    /// Which way it runs.
    pub direction: Direction,
    /// Most rows.
    pub limit: u32,
}

/// The cursor of the next page, given the position of the last row of a page and whether the
/// page was full: `None` when there is nothing more in that direction.
#[must_use]
pub fn next_cursor(direction: Direction, last: Option<u64>, full: bool) -> Option<u64> {
    let last = last.filter(|_| full)?;
    match direction {
        Direction::Forward => last.checked_add(1),
        Direction::Backward => last.checked_sub(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_TIMES: TimeSeqs = TimeSeqs {
        as_of: None,
        from_time: None,
        to_time: None,
    };

    #[test]
    fn as_of_a_seq_includes_that_seq() {
        let r = seq_range(Some(AsOf::Seq(9)), NO_TIMES);
        assert!(r.contains(9) && !r.contains(10) && r.contains(0));
        assert_eq!(seq_range(Some(AsOf::Seq(u64::MAX)), NO_TIMES).hi, u64::MAX);
    }

    #[test]
    fn as_of_a_time_before_the_first_entry_admits_nothing() {
        let r = seq_range(
            Some(AsOf::Time(5)),
            TimeSeqs {
                as_of: Some(0),
                ..NO_TIMES
            },
        );
        assert!(r.is_empty());
    }

    #[test]
    fn a_time_range_narrows_as_of_and_never_widens_it() {
        let r = seq_range(
            Some(AsOf::Seq(99)),
            TimeSeqs {
                as_of: None,
                from_time: Some(10),
                to_time: Some(500),
            },
        );
        assert_eq!(r, SeqRange { lo: 10, hi: 100 });
        let r = seq_range(
            None,
            TimeSeqs {
                as_of: None,
                from_time: Some(10),
                to_time: Some(20),
            },
        );
        assert_eq!(r, SeqRange { lo: 10, hi: 20 });
        assert!(!r.contains(20) && r.contains(10));
    }

    #[test]
    fn cursors_stop_at_the_ends() {
        assert_eq!(next_cursor(Direction::Forward, Some(4), true), Some(5));
        assert_eq!(next_cursor(Direction::Forward, Some(4), false), None);
        assert_eq!(next_cursor(Direction::Backward, Some(4), true), Some(3));
        assert_eq!(next_cursor(Direction::Backward, Some(0), true), None);
        assert_eq!(next_cursor(Direction::Forward, None, true), None);
    }
}
