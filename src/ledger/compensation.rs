//! Compensating events: an event may name an earlier event of its stream that it `corrects` or
//! `reverses`. Events are never updated or deleted; a mistake is answered by a new event that
//! points at it. The reference is chained like the rest of the entry: it lives in the entry's
//! metadata under a reserved key (`auditledger:corrects` or `auditledger:reverses`, the seq in
//! decimal), so the format and verification are unchanged. Pure: the rules an auditor reads.

use std::collections::BTreeMap;

/// Metadata key of a correction's target seq.
pub const CORRECTS_KEY: &str = "auditledger:corrects";
/// Metadata key of a reversal's target seq.
pub const REVERSES_KEY: &str = "auditledger:reverses";
/// Metadata keys with this prefix are the ledger's own: clients cannot set them directly.
pub const RESERVED_METADATA_PREFIX: &str = "auditledger:";

/// How an event compensates an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compensation {
    /// It corrects the earlier event (replaces some of what it said).
    Corrects(u64),
    /// It reverses the earlier event (undoes it entirely).
    Reverses(u64),
}

impl Compensation {
    /// The target's seq.
    #[must_use]
    pub fn target(self) -> u64 {
        match self {
            Compensation::Corrects(s) | Compensation::Reverses(s) => s,
        }
    }

    /// `corrects` or `reverses`.
    #[must_use]
    pub fn kind(self) -> &'static str {
        match self {
            Compensation::Corrects(_) => "corrects",
            Compensation::Reverses(_) => "reverses",
        }
    }

    /// Records it in an event's metadata.
    pub fn write(self, metadata: &mut BTreeMap<String, String>) {
        let key = match self {
            Compensation::Corrects(_) => CORRECTS_KEY,
            Compensation::Reverses(_) => REVERSES_KEY,
        };
        metadata.insert(key.to_owned(), self.target().to_string());
    }

    /// Reads it back from stored metadata; `None` if the event compensates nothing (or the
    /// value is not a seq, which only an entry written outside the API could hold).
    #[must_use]
    pub fn read(metadata: &BTreeMap<String, String>) -> Option<Compensation> {
        let seq = |k: &str| metadata.get(k).and_then(|v| v.parse::<u64>().ok());
        seq(CORRECTS_KEY)
            .map(Compensation::Corrects)
            .or_else(|| seq(REVERSES_KEY).map(Compensation::Reverses))
    }
}

/// What the ledger knows of the target when the compensating event is appended.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// Its stream.
    pub stream: &'a str,
    /// Whether its subject has been erased.
    pub erased: bool,
}

/// Why a reference is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadReference {
    /// No entry has that seq (yet).
    #[error("names seq {0}, which does not exist")]
    Missing(u64),
    /// The entry is in another stream.
    #[error("names seq {0}, which belongs to another stream")]
    OtherStream(u64),
    /// The entry's subject was erased: there is nothing left to correct.
    #[error("names seq {0}, whose subject has been erased")]
    Erased(u64),
}

/// Whether `c`, in an event of `stream`, may refer to `target` (`None`: no such entry).
///
/// # Errors
/// The reason the reference is refused.
pub fn check(
    c: Compensation,
    stream: &str,
    target: Option<Target<'_>>,
) -> Result<(), BadReference> {
    let seq = c.target();
    let t = target.ok_or(BadReference::Missing(seq))?;
    if t.stream != stream {
        return Err(BadReference::OtherStream(seq));
    }
    if t.erased {
        return Err(BadReference::Erased(seq));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_round_trips_through_metadata() {
        let mut m = BTreeMap::new();
        Compensation::Reverses(7).write(&mut m);
        assert_eq!(m.get(REVERSES_KEY).map(String::as_str), Some("7"));
        assert_eq!(Compensation::read(&m), Some(Compensation::Reverses(7)));
        assert_eq!(Compensation::read(&BTreeMap::new()), None);
    }

    #[test]
    fn only_a_live_event_of_the_same_stream_may_be_compensated() {
        let c = Compensation::Corrects(3);
        let live = Target {
            stream: "acct-1",
            erased: false,
        };
        assert_eq!(check(c, "acct-1", Some(live)), Ok(()));
        assert_eq!(check(c, "acct-1", None), Err(BadReference::Missing(3)));
        assert_eq!(
            check(c, "acct-2", Some(live)),
            Err(BadReference::OtherStream(3))
        );
        let erased = Target {
            erased: true,
            ..live
        };
        assert_eq!(
            check(c, "acct-1", Some(erased)),
            Err(BadReference::Erased(3))
        );
    }
}
