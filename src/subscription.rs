//! What a subscriber is sent, and from where it resumes. Pure: the rules an auditor reads.
//!
//! - A subscription delivers, in seq order, the client events that match its stream prefix and
//!   type, from its position on: first what is already in the log (catch-up), then each commit
//!   as it happens (live). Each SSE message carries the event's seq as its id, so a client that
//!   reconnects with `Last-Event-ID: N` resumes at N + 1 and misses nothing.
//! - Every erasure is announced to every subscriber, whatever its filters, as an `erasure`
//!   message naming the subject's handle: read models built from the events must forget too.
//!   Events of an erased subject are delivered as erased (no data), as every read shows them.
//! - The ledger's own entries (access records, holds, policies) are delivered only to a
//!   subscription whose prefix names their `auditledger:` stream.
//! - A subscriber that does not take what it is sent within [`SLOW_CLIENT_SECS`] gets a final
//!   `lagged` message naming the seq to resume from, and the stream ends: the service never
//!   buffers without bound for a slow client, and appends never wait for subscribers.

use crate::verify::invariants::{ERASURE_STREAM, SUBJECT_ERASED, SYSTEM_STREAM_PREFIX};
/// How long a subscriber may leave a full buffer untaken before it is cut off.
pub const SLOW_CLIENT_SECS: u64 = 10;
/// Messages buffered per subscriber.
pub const BUFFERED: usize = 2_000;
/// How often a subscriber re-reads the log without a commit notice, in milliseconds.
pub const POLL_MS: u64 = 1_000;

/// A subscription's limits (the constants above, but for tests that need them small).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Messages buffered per subscriber.
    pub buffered: usize,
    /// How long a full buffer may stay untaken.
    pub slow_client: std::time::Duration,
    /// How often the log is re-read without a notice.
    pub poll: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            buffered: BUFFERED,
            slow_client: std::time::Duration::from_secs(SLOW_CLIENT_SECS),
            poll: std::time::Duration::from_millis(POLL_MS),
        }
    }
}

/// What a subscription asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only streams whose id starts with this.
    pub stream_prefix: Option<String>,
    /// Only events of this type.
    pub event_type: Option<String>,
}

/// What to do with one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Send it as an event.
    Event,
    /// Announce it as an erasure.
    Erasure,
    /// Not for this subscriber.
    Skip,
}

impl Filter {
    /// Whether it asks for the ledger's own entries (its prefix names their streams).
    #[must_use]
    pub fn asks_for_ledger_entries(&self) -> bool {
        self.stream_prefix
            .as_deref()
            .is_some_and(|p| p.starts_with(SYSTEM_STREAM_PREFIX))
    }

    /// What to do with an entry of `stream` and `event_type`.
    #[must_use]
    pub fn classify(&self, stream: &str, event_type: &str) -> Delivery {
        if stream == ERASURE_STREAM && event_type == SUBJECT_ERASED {
            return Delivery::Erasure;
        }
        let prefix_ok = self
            .stream_prefix
            .as_deref()
            .is_none_or(|p| stream.starts_with(p));
        let own_asked = self.asks_for_ledger_entries();
        if !prefix_ok || (stream.starts_with(SYSTEM_STREAM_PREFIX) && !own_asked) {
            return Delivery::Skip;
        }
        if self.event_type.as_deref().is_some_and(|t| t != event_type) {
            return Delivery::Skip;
        }
        Delivery::Event
    }
}

/// Where a subscription starts: after the `Last-Event-ID` a reconnecting client sends, else at
/// `from_seq`, else at the start of the log.
///
/// # Errors
/// A `Last-Event-ID` that is not a seq.
pub fn start(last_event_id: Option<&str>, from_seq: Option<u64>) -> Result<u64, &'static str> {
    match last_event_id {
        Some(id) => id
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_add(1))
            .ok_or("Last-Event-ID must be the seq of the last event received"),
        None => Ok(from_seq.unwrap_or(0)),
    }
}

/// How much a process's key vault had forgotten at some moment: keys it destroyed or learnt
/// were destroyed, and times it emptied its whole cache (when it could not learn of erasures in
/// time). Both only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forgetting {
    /// Keys forgotten.
    pub forgets: u64,
    /// Whole-cache clears.
    pub clears: u64,
}

/// What to do, at the moment of sending, with an event opened earlier and kept ready to send
/// (subscribers share one opened copy of each live event, and a queued message may wait).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtSend {
    /// Nothing was forgotten that concerns it: send it as opened.
    Send,
    /// Its subject's key was destroyed since it was opened: send it as erased, as every read
    /// now shows it.
    Erased,
    /// The process emptied its key cache since (it may not know of an erasure made
    /// elsewhere): send nothing more; the client resumes from the last id it got and the
    /// event is read again from the database.
    Stop,
}

/// The rule for [`AtSend`]: a copy opened when the vault had forgotten `opened` is sent as it
/// is only if nothing was forgotten since, or what was forgotten is not its key
/// (`destroyed` asks, only when needed). A copy that needs no key (the system key's, an
/// event already erased) is never at risk and is not asked about.
#[must_use]
pub fn at_send(opened: Forgetting, now: Forgetting, destroyed: impl FnOnce() -> bool) -> AtSend {
    if now.clears != opened.clears {
        return AtSend::Stop;
    }
    if now.forgets != opened.forgets && destroyed() {
        return AtSend::Erased;
    }
    AtSend::Send
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erasures_reach_every_subscriber() {
        let f = Filter {
            stream_prefix: Some("acct-".into()),
            event_type: Some("Deposited".into()),
        };
        assert_eq!(
            f.classify(ERASURE_STREAM, SUBJECT_ERASED),
            Delivery::Erasure
        );
        assert_eq!(f.classify("acct-1", "Deposited"), Delivery::Event);
        assert_eq!(f.classify("acct-1", "Withdrawn"), Delivery::Skip);
        assert_eq!(f.classify("order-1", "Deposited"), Delivery::Skip);
    }

    #[test]
    fn the_ledgers_own_entries_only_when_asked_for() {
        let all = Filter::default();
        assert_eq!(
            all.classify("auditledger:access", "AccessRecorded"),
            Delivery::Skip
        );
        assert_eq!(all.classify("x", "T"), Delivery::Event);
        let own = Filter {
            stream_prefix: Some("auditledger:access".into()),
            event_type: None,
        };
        assert_eq!(
            own.classify("auditledger:access", "AccessRecorded"),
            Delivery::Event
        );
    }

    #[test]
    fn a_copy_opened_before_a_forget_of_its_key_goes_out_erased() {
        let opened = Forgetting {
            forgets: 3,
            clears: 1,
        };
        // Nothing forgotten since: sent without asking.
        assert_eq!(
            at_send(opened, opened, || unreachable!("not asked")),
            AtSend::Send
        );
        let later = Forgetting {
            forgets: 4,
            clears: 1,
        };
        assert_eq!(at_send(opened, later, || true), AtSend::Erased);
        // Another subject's key was forgotten: this one goes out as opened.
        assert_eq!(at_send(opened, later, || false), AtSend::Send);
        // The cache was emptied: this process may not know; stop, whatever else holds.
        let cleared = Forgetting {
            forgets: 3,
            clears: 2,
        };
        assert_eq!(at_send(opened, cleared, || false), AtSend::Stop);
    }

    #[test]
    fn last_event_id_wins_and_resumes_after_it() {
        assert_eq!(start(Some("41"), Some(3)), Ok(42));
        assert_eq!(start(None, Some(3)), Ok(3));
        assert_eq!(start(None, None), Ok(0));
        assert!(start(Some("x"), None).is_err());
        assert!(start(Some(&u64::MAX.to_string()), None).is_err());
    }
}

/// Durable named subscriptions: a position below which everything is acknowledged, and leases
/// of the ranges handed to consumers. Ranges tile the log from the position up; a lease not
/// acknowledged before it expires is handed out again whole (at-least-once), to whichever
/// consumer polls next (competing consumers share one subscription).
pub mod durable {
    /// A range of seqs handed to a consumer.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Lease {
        /// Its id.
        pub id: String,
        /// First seq of the range.
        pub from: u64,
        /// Last seq of the range (inclusive).
        pub to: u64,
        /// When it expires, µs since the epoch.
        pub expires_at: i64,
        /// Whether the consumer acknowledged it.
        pub acked: bool,
    }

    /// What the next poll hands out.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Next {
        /// An expired lease's range again (its id is replaced).
        Redeliver {
            /// The expired lease.
            expired: String,
            /// Its range.
            from: u64,
            /// Its range.
            to: u64,
        },
        /// New entries from this seq on.
        From(u64),
    }

    /// The next range to hand out, given the acknowledged position and the leases.
    #[must_use]
    pub fn next(position: u64, leases: &[Lease], now: i64) -> Next {
        if let Some(l) = leases
            .iter()
            .filter(|l| !l.acked && l.expires_at <= now)
            .min_by_key(|l| l.from)
        {
            return Next::Redeliver {
                expired: l.id.clone(),
                from: l.from,
                to: l.to,
            };
        }
        Next::From(
            leases
                .iter()
                .map(|l| l.to + 1)
                .max()
                .unwrap_or(position)
                .max(position),
        )
    }

    /// The position once acknowledged leases are folded in, and the leases that folds away.
    #[must_use]
    pub fn advance(position: u64, leases: &[Lease]) -> (u64, Vec<String>) {
        let mut acked: Vec<&Lease> = leases.iter().filter(|l| l.acked).collect();
        acked.sort_by_key(|l| l.from);
        let mut p = position;
        let mut done = Vec::new();
        for l in acked {
            if l.from <= p {
                p = p.max(l.to + 1);
                done.push(l.id.clone());
            } else {
                break;
            }
        }
        (p, done)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn lease(id: &str, from: u64, to: u64, expires_at: i64, acked: bool) -> Lease {
            Lease {
                id: id.into(),
                from,
                to,
                expires_at,
                acked,
            }
        }

        #[test]
        fn ranges_tile_the_log_and_expired_ones_come_back() {
            assert_eq!(next(5, &[], 0), Next::From(5));
            let live = [lease("a", 5, 9, 100, false), lease("b", 10, 14, 100, false)];
            assert_eq!(next(5, &live, 50), Next::From(15));
            assert_eq!(
                next(5, &live, 100),
                Next::Redeliver {
                    expired: "a".into(),
                    from: 5,
                    to: 9
                }
            );
            // An acknowledged lease is never handed out again, expired or not.
            let acked = [lease("a", 5, 9, 0, true)];
            assert_eq!(next(5, &acked, 50), Next::From(10));
        }

        #[test]
        fn the_position_moves_only_over_acknowledged_ranges_in_order() {
            let leases = [
                lease("a", 5, 9, 0, false),
                lease("b", 10, 14, 0, true),
                lease("c", 15, 20, 0, true),
            ];
            assert_eq!(advance(5, &leases), (5, vec![]));
            let leases = [
                lease("a", 5, 9, 0, true),
                lease("b", 10, 14, 0, false),
                lease("c", 15, 20, 0, true),
            ];
            assert_eq!(advance(5, &leases), (10, vec!["a".to_owned()]));
            let leases = [lease("a", 5, 9, 0, true), lease("c", 10, 20, 0, true)];
            assert_eq!(
                advance(5, &leases),
                (21, vec!["a".to_owned(), "c".to_owned()])
            );
        }
    }
}
