//! Batches this process has just committed, kept in memory for the live feed (`api::feed`), so
//! that it opens a new batch from the records the writer already holds instead of reading them
//! back from the database after each commit.
//!
//! Used only where one process owns the database (SQLite). On PostgreSQL another instance may
//! erase a subject between this instance's commit and the feed's opening; a row read back
//! then says so at once, while this instance's key cache learns it only within
//! `CACHES_CLEARED_WITHIN_MS`.
//!
//! Only a hint: the feed asks for the records from its position on and reads the database
//! whenever they are not all here — before anyone follows, after a gap (an entry written by
//! work that runs alone, or by another instance on PostgreSQL), or once they were dropped.
//! What it gets is what was committed: a batch is added after its COMMIT returned (or was found
//! to have landed), never a batch that was rolled back or found stale.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::record::Record;

/// Records kept at most: the feed follows within a few batches, or reads the database.
pub const KEEP: usize = 8192;
/// Bytes of sealed payloads kept at most (an event may hold up to a MiB; 8,192 of them
/// would be 8 GiB), as the feed's own ring is bounded by `api::feed::RING_BYTES`.
pub const KEEP_BYTES: usize = 64 << 20;

/// The recent batches, while someone follows them.
#[derive(Debug)]
pub struct Recent {
    /// Whether batches may be kept at all (see the module's note).
    enabled: bool,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Whether anyone follows (nothing is kept otherwise).
    following: bool,
    /// Committed batches, in seq order (consecutive only where no other entry came between),
    /// each with when its commit returned.
    batches: VecDeque<(Arc<[Record]>, Instant)>,
    /// Records held in `batches`.
    held: usize,
    /// Bytes of sealed payloads held in `batches`.
    bytes: usize,
}

/// What a record's sealed payload weighs.
fn weight(batch: &[Record]) -> usize {
    batch
        .iter()
        .map(|r| r.payload.as_ref().map_or(0, |p| p.0.len()))
        .sum()
}

impl Inner {
    fn drop_front(&mut self) {
        if let Some((dropped, _)) = self.batches.pop_front() {
            self.held -= dropped.len();
            self.bytes -= weight(&dropped);
        }
    }
}

impl Recent {
    /// Keeps nothing unless `enabled`.
    #[must_use]
    pub fn new(enabled: bool) -> Recent {
        Recent {
            enabled,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts (or stops, dropping what is held) keeping batches.
    pub fn follow(&self, on: bool) {
        let mut inner = self.lock();
        inner.following = on && self.enabled;
        if !inner.following {
            *inner = Inner::default();
        }
    }

    /// Keeps a copy of a committed batch, if anyone follows.
    pub(super) fn committed(&self, records: &[Record]) {
        if records.is_empty() || !self.lock().following {
            return;
        }
        let at = Instant::now();
        // Copied outside the lock, which the feed takes too.
        let batch: Arc<[Record]> = records.into();
        let bytes = weight(&batch);
        let mut inner = self.lock();
        if !inner.following {
            return;
        }
        inner.held += batch.len();
        inner.bytes += bytes;
        inner.batches.push_back((batch, at));
        while (inner.held > KEEP || inner.bytes > KEEP_BYTES) && !inner.batches.is_empty() {
            inner.drop_front();
        }
    }

    /// The records from `seq` on, each with when its batch's commit returned, up to at least
    /// `max` (whole batches), if the first held batch that reaches `seq` holds it and nothing
    /// is missing after it; `None` otherwise (read the database). Batches wholly before `seq`
    /// are dropped: the caller has them.
    #[must_use]
    pub fn from(&self, seq: u64, max: usize) -> Option<Vec<(Record, Instant)>> {
        let (batches, skip) = {
            let mut inner = self.lock();
            while inner
                .batches
                .front()
                .and_then(|(b, _)| b.last())
                .is_some_and(|r| r.entry.header.seq.0 < seq)
            {
                inner.drop_front();
            }
            let (first, _) = inner.batches.front()?;
            let skip = usize::try_from(seq.checked_sub(first.first()?.entry.header.seq.0)?).ok()?;
            let mut taken = Vec::new();
            let mut count = 0;
            for (batch, at) in &inner.batches {
                if count >= max {
                    break;
                }
                count += batch.len();
                taken.push((Arc::clone(batch), *at));
            }
            (taken, skip)
        };
        // Copied outside the lock.
        let mut out = Vec::new();
        let mut next = seq;
        for (i, (batch, at)) in batches.iter().enumerate() {
            let from = if i == 0 { skip } else { 0 };
            let Some(part) = batch.get(from..) else { break };
            if part.first().map(|r| r.entry.header.seq.0) != Some(next) {
                break;
            }
            out.extend(part.iter().map(|r| (r.clone(), *at)));
            next = out.last().map_or(next, |(r, _)| r.entry.header.seq.0 + 1);
        }
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::crypto::{KeyId, Signature};
    use crate::entry::{
        Entry, EntryHash, EntryHeader, EventType, Metadata, PayloadDigest, Seq, StreamId,
    };

    fn record(seq: u64) -> Record {
        Record {
            entry: Entry {
                header: EntryHeader {
                    ledger_id: None,
                    seq: Seq(seq),
                    stream_id: StreamId::parse("acct-1").unwrap(),
                    stream_version: seq,
                    event_type: EventType::parse("Opened").unwrap(),
                    schema_version: 1,
                    subject: None,
                    recorded_at_micros: 0,
                    metadata: Metadata::new(),
                },
                payload_digest: PayloadDigest([0; 32]),
                prev_hash: EntryHash([0; 32]),
            },
            payload: None,
            entry_hash: EntryHash([0; 32]),
            signature: Signature([0; 64]),
            key_id: KeyId([0; 8]),
        }
    }

    fn batch(seqs: std::ops::Range<u64>) -> Vec<Record> {
        seqs.map(record).collect()
    }

    fn seqs(records: &[(Record, Instant)]) -> Vec<u64> {
        records.iter().map(|(r, _)| r.entry.header.seq.0).collect()
    }

    #[test]
    fn nothing_is_kept_while_no_one_follows_or_where_it_is_not_enabled() {
        let off = Recent::new(false);
        off.follow(true);
        off.committed(&batch(0..3));
        assert!(off.from(0, 10).is_none());
        let recent = Recent::new(true);
        recent.committed(&batch(0..3));
        assert!(recent.from(0, 10).is_none());
        recent.follow(true);
        recent.committed(&batch(3..5));
        assert_eq!(seqs(&recent.from(3, 10).unwrap()), [3, 4]);
        recent.follow(false);
        assert!(recent.from(3, 10).is_none());
    }

    #[test]
    fn a_gap_ends_what_is_handed_out_and_a_position_not_held_reads_the_database() {
        let recent = Recent::new(true);
        recent.follow(true);
        recent.committed(&batch(10..13));
        recent.committed(&batch(13..15));
        // seq 15 was written by work that ran alone: not here.
        recent.committed(&batch(16..18));
        assert_eq!(seqs(&recent.from(11, 100).unwrap()), [11, 12, 13, 14]);
        assert!(recent.from(15, 100).is_none(), "15 is not held");
        assert_eq!(seqs(&recent.from(16, 100).unwrap()), [16, 17]);
        // Before what is held (and what was dropped as passed): the database.
        assert!(recent.from(9, 100).is_none());
        assert!(recent.from(12, 100).is_none());
        // Past the newest: nothing yet.
        assert!(recent.from(18, 100).is_none());
    }

    #[test]
    fn whole_batches_up_to_max_and_no_more_than_keep_records() {
        let recent = Recent::new(true);
        recent.follow(true);
        recent.committed(&batch(0..5));
        recent.committed(&batch(5..10));
        assert_eq!(seqs(&recent.from(0, 3).unwrap()), [0, 1, 2, 3, 4]);
        assert_eq!(recent.from(0, 6).unwrap().len(), 10);
        let big = u64::try_from(KEEP).unwrap();
        recent.committed(&batch(10..10 + big));
        assert!(recent.from(0, 10).is_none(), "the oldest were dropped");
        assert_eq!(recent.from(10, 1).unwrap().len(), KEEP);
        // A batch larger than what may be kept is not kept at all.
        recent.committed(&batch(10 + big..11 + 2 * big));
        assert!(recent.from(10 + big, 1).is_none());
    }

    #[test]
    fn large_payloads_are_kept_up_to_keep_bytes() {
        let recent = Recent::new(true);
        recent.follow(true);
        let each = 64 * 1024;
        let n = u64::try_from(2 * KEEP_BYTES / each).unwrap();
        for seq in 0..n {
            let mut r = record(seq);
            r.payload = Some(crate::crypto::SealedPayload(vec![0; each]));
            recent.committed(&[r]);
        }
        assert!(recent.from(0, 1).is_none(), "the oldest were dropped");
        let kept = u64::try_from(KEEP_BYTES / each).unwrap();
        assert_eq!(recent.from(n - kept, 1).unwrap().len(), 1);
        assert!(recent.from(n - kept - 1, 1).is_none());
    }
}
