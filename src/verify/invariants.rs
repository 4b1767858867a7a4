//! The chain's own invariants, beyond hashes and signatures: what a validly signed entry must
//! still obey. Pure.
//!
//! - Every payload is sealed under the key its header calls for: the ledger's own entries and
//!   entries without a subject under a system key, a subject's entries under that subject's key.
//! - `recorded_at` never decreases along the chain (so reading "as of a time" is sound).
//! - Each stream's versions are dense from 0 (from the first version seen, in a partial range).
//! - Streams starting with `auditledger:` hold only the ledger's own entry types.
//! - A subject handle never appears on an entry after its erasure entry.

use std::collections::HashMap;

use super::{Failure, FailureKind};
use crate::access::record;
use crate::crypto::{KeyRef, SealedPayload};
use crate::entry::{EntryHeader, Seq, SubjectHandle};
use crate::record::Record;
use crate::rotation::{KEYS_STREAM, SIGNING_KEY_ROTATED};

/// Prefix reserved for the ledger's own streams; clients cannot append to them.
pub const SYSTEM_STREAM_PREFIX: &str = "auditledger:";
/// The system stream that erasure entries go to.
pub const ERASURE_STREAM: &str = "auditledger:subject-erasures";
/// Event type of an erasure entry.
pub const SUBJECT_ERASED: &str = "SubjectErased";

/// The ledger's own entry types, by stream.
pub const SYSTEM_ENTRY_TYPES: &[(&str, &str)] = &[
    (ERASURE_STREAM, SUBJECT_ERASED),
    (KEYS_STREAM, SIGNING_KEY_ROTATED),
    (record::ACCESS_STREAM, record::ACCESS_RECORDED),
    (record::HOLDS_STREAM, record::HOLD_PLACED),
    (record::HOLDS_STREAM, record::HOLD_RELEASED),
    (record::POLICIES_STREAM, record::POLICY_SET),
    (
        crate::upcast::SCHEMAS_STREAM,
        crate::upcast::SCHEMA_REGISTERED,
    ),
];

/// Whether `header` is an erasure entry.
#[must_use]
pub fn is_erasure(header: &EntryHeader) -> bool {
    header.stream_id.as_str() == ERASURE_STREAM && header.event_type.as_str() == SUBJECT_ERASED
}

/// Whether `header` is a signing-key rotation entry.
#[must_use]
pub fn is_rotation(header: &EntryHeader) -> bool {
    header.stream_id.as_str() == KEYS_STREAM && header.event_type.as_str() == SIGNING_KEY_ROTATED
}

/// The key references a ledger's payloads name, with the first seq naming each, for checking
/// against the key vault ([`super::vault::check`]).
#[derive(Debug, Default)]
pub struct KeyRefsSeen {
    /// Subject handles of (non-erasure) entries.
    pub subjects: HashMap<SubjectHandle, Seq>,
    /// System key ids.
    pub system: HashMap<[u8; 16], Seq>,
}

/// The invariants' running state.
#[derive(Debug)]
pub struct Invariants {
    from_genesis: bool,
    last_recorded_at: Option<i64>,
    streams: HashMap<String, u64>,
    erased: HashMap<SubjectHandle, Seq>,
    key_refs: Option<KeyRefsSeen>,
}

impl Invariants {
    /// State for a history starting at seq 0 (`from_genesis`) or in the middle.
    #[must_use]
    pub fn new(from_genesis: bool) -> Invariants {
        Invariants {
            from_genesis,
            last_recorded_at: None,
            streams: HashMap::new(),
            erased: HashMap::new(),
            key_refs: None,
        }
    }

    /// Starts collecting key references.
    pub fn track_key_refs(&mut self) {
        self.key_refs.get_or_insert_with(KeyRefsSeen::default);
    }

    /// Handles erased in the history seen, with their erasure entry's seq.
    #[must_use]
    pub fn erased(&self) -> &HashMap<SubjectHandle, Seq> {
        &self.erased
    }

    /// Key references seen, if tracked.
    #[must_use]
    pub fn key_refs(&self) -> Option<&KeyRefsSeen> {
        self.key_refs.as_ref()
    }

    /// Whether the history seen starts at seq 0.
    #[must_use]
    pub fn from_genesis(&self) -> bool {
        self.from_genesis
    }

    /// Checks one record (already known to hash and link correctly) and records its effects.
    ///
    /// # Errors
    /// The invariant it breaks.
    pub fn check(&mut self, record: &Record, payload: &SealedPayload) -> Result<(), Failure> {
        let h = &record.entry.header;
        check_reserved(h)?;
        let key_ref = check_sealed_under(h, payload)?;
        self.check_order(h)?;
        // Effects, once every check has passed.
        self.last_recorded_at = Some(h.recorded_at_micros);
        let stream = h.stream_id.as_str();
        if let Some(v) = self.streams.get_mut(stream) {
            *v = h.stream_version;
        } else {
            self.streams.insert(stream.to_owned(), h.stream_version);
        }
        if let Some(subject) = h.subject
            && is_erasure(h)
        {
            self.erased.insert(subject, h.seq);
        }
        if let Some(refs) = &mut self.key_refs {
            match key_ref {
                KeyRef::System(id) => {
                    refs.system.entry(id).or_insert(h.seq);
                }
                KeyRef::Subject(handle) => {
                    refs.subjects.entry(handle).or_insert(h.seq);
                }
            }
        }
        Ok(())
    }

    /// Time, stream versions and erased handles: what depends on the entries before.
    fn check_order(&self, h: &EntryHeader) -> Result<(), Failure> {
        let fail = |kind, detail: String| Failure::new(h.seq, kind, detail);
        let stream = h.stream_id.as_str();
        if let Some(last) = self.last_recorded_at
            && h.recorded_at_micros < last
        {
            return Err(fail(
                FailureKind::TimeReversal,
                format!(
                    "recorded_at {} is earlier than the previous entry's {}",
                    crate::timefmt::format_micros(h.recorded_at_micros),
                    crate::timefmt::format_micros(last)
                ),
            ));
        }
        match self.streams.get(stream) {
            Some(&v) if Some(h.stream_version) != v.checked_add(1) => {
                return Err(fail(
                    FailureKind::StreamVersionGap,
                    format!(
                        "stream {stream} is at version {v}, and this entry has version {}",
                        h.stream_version
                    ),
                ));
            }
            None if self.from_genesis && h.stream_version != 0 => {
                return Err(fail(
                    FailureKind::StreamVersionGap,
                    format!(
                        "the first entry of stream {stream} has version {}, not 0",
                        h.stream_version
                    ),
                ));
            }
            _ => {}
        }
        if let Some(subject) = h.subject
            && let Some(erased_at) = self.erased.get(&subject)
        {
            return Err(fail(
                FailureKind::ErasedHandleReused,
                format!(
                    "subject {} was erased at seq {erased_at}; no later entry may name it",
                    subject.to_hex()
                ),
            ));
        }
        Ok(())
    }
}

/// The ledger's own streams hold only the ledger's own entry types, each of its shape.
fn check_reserved(h: &EntryHeader) -> Result<(), Failure> {
    let fail = |detail: String| Failure::new(h.seq, FailureKind::ReservedStream, detail);
    let stream = h.stream_id.as_str();
    if stream.starts_with(SYSTEM_STREAM_PREFIX)
        && !SYSTEM_ENTRY_TYPES
            .iter()
            .any(|(s, t)| *s == stream && *t == h.event_type.as_str())
    {
        return Err(fail(format!(
            "an entry of type {} in the ledger's own stream {stream}, which holds only the ledger's own entry types",
            h.event_type
        )));
    }
    if is_erasure(h) && h.subject.is_none() {
        return Err(fail("an erasure entry that names no subject".to_owned()));
    }
    if is_rotation(h) && h.subject.is_some() {
        return Err(fail("a key rotation entry that names a subject".to_owned()));
    }
    Ok(())
}

/// The payload is sealed under the key the header calls for; returns that key's reference.
fn check_sealed_under(h: &EntryHeader, payload: &SealedPayload) -> Result<KeyRef, Failure> {
    let system = h.stream_id.as_str().starts_with(SYSTEM_STREAM_PREFIX);
    let key_ref = payload.key_ref().map_err(|_| {
        Failure::new(
            h.seq,
            FailureKind::MalformedRecord,
            "the sealed payload does not name its key",
        )
    })?;
    let sealed_right = match (key_ref, h.subject) {
        (KeyRef::System(_), _) if system => true,
        (KeyRef::System(_), None) => true,
        (KeyRef::Subject(k), Some(s)) if !system => k == s,
        _ => false,
    };
    if sealed_right {
        return Ok(key_ref);
    }
    Err(Failure::new(
        h.seq,
        FailureKind::PayloadKeyMismatch,
        match h.subject {
            Some(s) if !system => format!(
                "an entry of subject {} whose payload is not sealed under that subject's key",
                s.to_hex()
            ),
            _ => "an entry without a subject whose payload is not sealed under the system key"
                .to_owned(),
        },
    ))
}
