//! Live readers: subscribers whose disclosures the writer records in the transaction of the
//! events they disclose.
//!
//! A subscriber may send nothing it has not recorded (an access entry naming the subjects whose
//! data it decrypts), and recording used to be an append of its own: one more commit between
//! an event's commit and its delivery. A registered reader is instead recorded by the writer:
//! each batch it prepares carries, for the readers registered then and within [`MAX_BEHIND`] of
//! it, an access entry per token and filter for what the filter admits of the batch at or after
//! the reader's position (`batch::Preparer::record_live_readers`), and once the batch has
//! committed those readers learn that the batch's seqs are covered. The subscriber then records
//! only what no committed batch covered for it (entries of other instances, of work that runs
//! alone, of batches prepared before it registered or while it was far behind).
//!
//! Such an entry records a disclosure when the events commit, before they are sent; a reader
//! that goes away before sending them, or whose events go out erased because the subject was
//! erased in between, is recorded as having read what it did not. An access log may say more
//! than was read, never less.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::access::record::Actor;
use crate::subscription::Filter;

/// How far behind a batch a reader's position may be for the batch to record for it: a reader
/// further behind (catching up from far back) records its own pages, so that an access entry
/// does not claim, long before, what the reader may never reach.
pub const MAX_BEHIND: u64 = 16_384;

/// The readers registered in this process.
#[derive(Debug, Default)]
pub struct LiveReaders {
    readers: Mutex<Vec<Arc<LiveReader>>>,
}

/// One registered reader: who reads, what it admits, and which seqs are recorded for it.
#[derive(Debug)]
pub struct LiveReader {
    /// Who the access entries name.
    pub actor: Actor,
    /// What the reader is sent.
    pub filter: Filter,
    /// The seq it reads next.
    position: AtomicU64,
    /// Ranges of seqs (inclusive, ascending, from committed batches) recorded for it.
    covered: Mutex<VecDeque<(u64, u64)>>,
}

/// A reader's registration: it ends when dropped.
#[derive(Debug)]
pub struct Registration {
    readers: Arc<LiveReaders>,
    reader: Arc<LiveReader>,
}

impl LiveReaders {
    /// Registers a reader; the writer records for it from the next batch it prepares.
    #[must_use]
    pub fn register(self: &Arc<Self>, actor: Actor, filter: Filter, from: u64) -> Registration {
        let reader = Arc::new(LiveReader {
            actor,
            filter,
            position: AtomicU64::new(from),
            covered: Mutex::new(VecDeque::new()),
        });
        self.lock().push(Arc::clone(&reader));
        Registration {
            readers: Arc::clone(self),
            reader,
        }
    }

    /// The readers a batch from `first` on records for (those not too far behind it).
    pub(super) fn current(&self, first: u64) -> Vec<Arc<LiveReader>> {
        self.lock()
            .iter()
            .filter(|r| {
                r.position
                    .load(Ordering::Relaxed)
                    .saturating_add(MAX_BEHIND)
                    >= first
            })
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<LiveReader>>> {
        self.readers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LiveReader {
    /// The seq it reads next (as last reported; it only grows).
    pub(super) fn position(&self) -> u64 {
        self.position.load(Ordering::Relaxed)
    }

    /// Notes that a committed batch, `first..=last`, recorded what it disclosed to this reader.
    pub(super) fn cover(&self, first: u64, last: u64) {
        let mut c = self.lock();
        match c.back_mut() {
            Some(back) if back.1 + 1 == first => back.1 = last,
            _ => c.push_back((first, last)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, u64)>> {
        self.covered.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Registration {
    /// Whether the entry at `seq` was recorded for this reader by its batch.
    #[must_use]
    pub fn covers(&self, seq: u64) -> bool {
        let c = self.reader.lock();
        let at = c.partition_point(|&(_, last)| last < seq);
        c.get(at).is_some_and(|&(first, _)| first <= seq)
    }

    /// Moves the reader to `seq`, forgetting what is covered below it.
    pub fn passed(&self, seq: u64) {
        self.reader.position.fetch_max(seq, Ordering::Relaxed);
        let mut c = self.reader.lock();
        while c.front().is_some_and(|&(_, last)| last < seq) {
            c.pop_front();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.readers
            .lock()
            .retain(|r| !Arc::ptr_eq(r, &self.reader));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(readers: &Arc<LiveReaders>) -> Registration {
        readers.register(
            Actor {
                token_id: "t".to_owned(),
                role: "reader".to_owned(),
            },
            Filter::default(),
            0,
        )
    }

    #[test]
    fn covered_ranges_answer_exactly_their_seqs() {
        let readers = Arc::new(LiveReaders::default());
        let r = reader(&readers);
        assert!(!r.covers(0));
        readers.current(0)[0].cover(3, 5);
        readers.current(0)[0].cover(6, 7);
        readers.current(0)[0].cover(10, 12);
        let covered: Vec<u64> = (0..15).filter(|&s| r.covers(s)).collect();
        assert_eq!(covered, vec![3, 4, 5, 6, 7, 10, 11, 12]);
        r.passed(8);
        assert!(!r.covers(5) && r.covers(10));
        drop(r);
        assert!(readers.current(0).is_empty());
    }

    #[test]
    fn a_reader_far_behind_is_not_recorded_for() {
        let readers = Arc::new(LiveReaders::default());
        let r = reader(&readers);
        assert_eq!(readers.current(MAX_BEHIND).len(), 1);
        assert!(readers.current(MAX_BEHIND + 1).is_empty());
        r.passed(1);
        assert_eq!(readers.current(MAX_BEHIND + 1).len(), 1);
    }
}
