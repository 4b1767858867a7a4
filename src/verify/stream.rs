//! The subjects of one stream, as its verified entries name them: what a snapshot of the stream
//! must be sealed under (`crate::snapshot`). Pure.
//!
//! The database's `subject` column is not evidence: a database writer without the signing key
//! can clear it for a moment and restore it, and the chain verifies again afterwards. The
//! signed entry is evidence, so the subjects are taken from entries that pass, each on its own:
//! 1. it is of this stream, at the next stream version (a deleted row shows as a gap);
//! 2. its sealed payload is present and hashes to `payload_digest`;
//! 3. its fields hash to the stored `entry_hash` (a cleared `subject` fails here, as the
//!    subject is a hashed header field);
//! 4. it carries this ledger's identity (a legacy v1 entry, without one, only before the
//!    stream's first v2 entry: a ledger never goes back);
//! 5. the key that signed it is trusted at its seq ([`TrustedKeys::key_at`]);
//! 6. its signature verifies (ZIP-215, in parallel batches).
//!
//! What these checks do not see is the chain around the stream (links, checkpoints, the key
//! schedule): `auditledger verify` does. Against a database writer without the signing key they
//! need not: an entry signed by a trusted key at a stream version is the only one the writer
//! made there, so its subject is the stream's subject at that version, whatever else was done
//! to the database. The holder of a retired key could sign a replacement inside the key's range
//! (docs/THREAT-MODEL.md §3.2); only the chain's links expose that.
//!
//! A signed entry never changes, so what was verified once stays true: [`StreamSubjects`] is
//! extended with the entries after the last verified one, and a caller may keep it between
//! requests.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::{Failure, FailureKind, SIGNATURE_BATCH, TrustedKeys};
use crate::crypto::{PublicKey, Signature, verify_entries_batch};
use crate::entry::{EntryHash, LedgerId, Seq, StreamId, SubjectHandle};
use crate::record::Record;

/// Why the subjects of a stream up to a version are not given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubjectsUnknown {
    /// The entries up to that version have not all been verified (extend first).
    #[error("the stream's entries are verified only below version {next}")]
    NotVerified {
        /// The first version not verified.
        next: u64,
    },
    /// They name more subjects than the limit.
    #[error("the stream's entries up to that version name more than {limit} subjects")]
    TooMany {
        /// The limit.
        limit: usize,
    },
}

/// The subjects of one stream's entries from version 0 up to the last verified one.
#[derive(Clone, Debug)]
pub struct StreamSubjects {
    stream: StreamId,
    /// Versions below this are verified.
    next: u64,
    /// Each subject named, with the first version that names it. At most `limit + 1` are kept:
    /// once there are more than `limit` by some version, every later version has too many, and
    /// an earlier one needs only subjects first named before it — all kept (each version names
    /// at most one subject, so the ones not kept are first named after the last one kept).
    first_named: BTreeMap<SubjectHandle, u64>,
    limit: usize,
    /// Whether a v2 entry (with a ledger identity) has been verified: no v1 entry may follow.
    v2_seen: bool,
}

impl StreamSubjects {
    /// Nothing of `stream` verified yet; a version whose entries name more than `limit`
    /// subjects will be refused.
    #[must_use]
    pub fn new(stream: StreamId, limit: usize) -> StreamSubjects {
        StreamSubjects {
            stream,
            next: 0,
            first_named: BTreeMap::new(),
            limit,
            v2_seen: false,
        }
    }

    /// The stream.
    #[must_use]
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// The first version not yet verified (0 when none is).
    #[must_use]
    pub fn next_version(&self) -> u64 {
        self.next
    }

    /// The subjects the stream's entries name up to `version` (inclusive), sorted.
    ///
    /// # Errors
    /// The entries up to `version` are not all verified, or name more than the limit.
    pub fn at(&self, version: u64) -> Result<Vec<SubjectHandle>, SubjectsUnknown> {
        if version >= self.next {
            return Err(SubjectsUnknown::NotVerified { next: self.next });
        }
        let subjects: Vec<SubjectHandle> = self
            .first_named
            .iter()
            .filter(|(_, first)| **first <= version)
            .map(|(s, _)| *s)
            .collect();
        if subjects.len() > self.limit {
            return Err(SubjectsUnknown::TooMany { limit: self.limit });
        }
        Ok(subjects)
    }

    /// Verifies `records`, the stream's entries from [`StreamSubjects::next_version`] on in
    /// order, against the keys the caller trusts and the ledger's identity, and takes in the
    /// subjects they name. All or nothing: on a failure nothing of `records` is taken in.
    ///
    /// # Errors
    /// The first record that fails (signatures are checked last, so a record that fails another
    /// check is named even if an earlier one's signature is bad).
    pub fn extend(
        &mut self,
        records: &[Record],
        keys: &TrustedKeys,
        ledger_id: LedgerId,
    ) -> Result<(), Failure> {
        let mut next = self.next;
        let mut v2_seen = self.v2_seen;
        let mut named = Vec::new();
        let mut signed = Vec::with_capacity(records.len());
        for record in records {
            let header = &record.entry.header;
            let seq = header.seq;
            let fail = |kind, detail: String| Failure::new(seq, kind, detail);
            if header.stream_id != self.stream {
                return Err(fail(
                    FailureKind::StreamVersionGap,
                    format!("an entry of another stream stands where version {next} should be"),
                ));
            }
            if header.stream_version != next {
                return Err(fail(
                    FailureKind::StreamVersionGap,
                    format!(
                        "expected the stream's version {next}, found version {}",
                        header.stream_version
                    ),
                ));
            }
            check_hashes(record)?;
            match header.ledger_id {
                Some(id) if id != ledger_id => {
                    return Err(fail(
                        FailureKind::LedgerMismatch,
                        format!("the entry belongs to ledger {id}, not {ledger_id}"),
                    ));
                }
                Some(_) => v2_seen = true,
                None if v2_seen => {
                    return Err(fail(
                        FailureKind::LedgerMismatch,
                        "a legacy v1 entry after a v2 entry of the stream".to_owned(),
                    ));
                }
                None => {}
            }
            let key = keys.key_at(&record.key_id, seq.0)?;
            signed.push((seq, *key, record.entry_hash, record.signature));
            if let Some(subject) = header.subject {
                named.push((subject, next));
            }
            next += 1;
        }
        if let Some(f) = first_bad_signature(&signed) {
            return Err(f);
        }
        for (subject, version) in named {
            if self.first_named.len() > self.limit {
                break;
            }
            self.first_named.entry(subject).or_insert(version);
        }
        self.next = next;
        self.v2_seen = v2_seen;
        Ok(())
    }
}

/// Checks 2 and 3: the payload is there and hashes to its digest, the fields to the entry hash.
fn check_hashes(record: &Record) -> Result<(), Failure> {
    let seq = record.entry.header.seq;
    let Some(payload) = &record.payload else {
        return Err(Failure::new(
            seq,
            FailureKind::MissingPayload,
            "the sealed payload is missing; nothing purges payloads, so it was removed",
        ));
    };
    if payload.digest() != record.entry.payload_digest {
        return Err(Failure::new(
            seq,
            FailureKind::PayloadDigestMismatch,
            "the sealed payload does not hash to payload_digest",
        ));
    }
    let computed = record.entry.hash();
    if computed != record.entry_hash {
        return Err(Failure::new(
            seq,
            FailureKind::EntryHashMismatch,
            format!(
                "the fields hash to {}, the stored entry_hash is {}",
                computed.to_hex(),
                record.entry_hash.to_hex()
            ),
        ));
    }
    Ok(())
}

/// The first signature that does not verify, if any. A batch that fails is a failure even if
/// no single signature in it does (fail closed), as in [`super::Verifier`].
fn first_bad_signature(signed: &[(Seq, PublicKey, EntryHash, Signature)]) -> Option<Failure> {
    signed
        .par_chunks(SIGNATURE_BATCH)
        .filter_map(|chunk| {
            let items: Vec<_> = chunk.iter().map(|(_, k, h, s)| (k, h, s)).collect();
            if verify_entries_batch(&items) {
                return None;
            }
            let single = chunk
                .iter()
                .find(|(_, k, h, s)| k.verify_entry(h, s).is_err())
                .map(|(seq, k, _, _)| {
                    Failure::new(
                        *seq,
                        FailureKind::BadSignature,
                        format!("the signature does not verify under key {}", k.key_id()),
                    )
                });
            Some(single.unwrap_or_else(|| {
                Failure::new(
                    chunk[0].0,
                    FailureKind::BadSignature,
                    "batch verification of the signatures from this seq failed, although none \
                     failed alone: refusing to accept them",
                )
            }))
        })
        .min_by_key(|f| f.seq)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::{KeyRef, LedgerSigningKey};
    use crate::verify::KeyRange;
    use crate::verify::testkit::{Builder, LEDGER};

    const ALICE: SubjectHandle = SubjectHandle([0xa1; 16]);
    const BOB: SubjectHandle = SubjectHandle([0xb0; 16]);

    fn acct() -> StreamId {
        StreamId::parse("acct-1").unwrap()
    }

    /// `acct-1` gets alice at version 0, nothing at 1, bob at 2; `other` an event between.
    fn ledger() -> Builder {
        let mut b = Builder::new(LedgerSigningKey::generate());
        b.event("acct-1", Some(ALICE));
        b.event("other", Some(BOB));
        b.event("acct-1", None);
        b.event("acct-1", Some(BOB));
        b
    }

    fn trusting(b: &Builder) -> TrustedKeys {
        let mut keys = TrustedKeys::new();
        keys.insert(b.key.public_key());
        keys
    }

    fn of_acct(b: &Builder) -> Vec<Record> {
        b.records
            .iter()
            .filter(|r| r.entry.header.stream_id == acct())
            .cloned()
            .collect()
    }

    fn verify(records: &[Record], keys: &TrustedKeys) -> Result<StreamSubjects, Failure> {
        let mut s = StreamSubjects::new(acct(), 64);
        s.extend(records, keys, LEDGER)?;
        Ok(s)
    }

    #[test]
    fn the_subjects_up_to_a_version_are_those_its_signed_entries_name() {
        let b = ledger();
        let s = verify(&of_acct(&b), &trusting(&b)).unwrap();
        assert_eq!(s.next_version(), 3);
        assert_eq!(s.at(0).unwrap(), vec![ALICE]);
        assert_eq!(s.at(1).unwrap(), vec![ALICE]);
        assert_eq!(s.at(2).unwrap(), vec![ALICE, BOB]);
        assert_eq!(s.at(3), Err(SubjectsUnknown::NotVerified { next: 3 }));
    }

    #[test]
    fn verified_in_pages_it_gives_what_it_gives_at_once() {
        let b = ledger();
        let keys = trusting(&b);
        let records = of_acct(&b);
        let mut s = StreamSubjects::new(acct(), 64);
        assert_eq!(s.at(0), Err(SubjectsUnknown::NotVerified { next: 0 }));
        for page in records.chunks(1) {
            s.extend(page, &keys, LEDGER).unwrap();
        }
        assert_eq!(s.at(2).unwrap(), vec![ALICE, BOB]);
        // A page must start where the last ended.
        assert_eq!(
            s.extend(&records[2..], &keys, LEDGER).unwrap_err().kind,
            FailureKind::StreamVersionGap
        );
    }

    #[test]
    fn a_cleared_subject_does_not_verify() {
        let b = ledger();
        let mut records = of_acct(&b);
        records[2].entry.header.subject = None;
        let f = verify(&records, &trusting(&b)).unwrap_err();
        assert_eq!((f.seq, f.kind), (Seq(3), FailureKind::EntryHashMismatch));
    }

    #[test]
    fn a_failure_takes_in_nothing_of_the_page() {
        let b = ledger();
        let keys = trusting(&b);
        let mut records = of_acct(&b);
        let mut s = verify(&records[..1], &keys).unwrap();
        records[2].signature.0[0] ^= 1;
        let f = s.extend(&records[1..], &keys, LEDGER).unwrap_err();
        assert_eq!((f.seq, f.kind), (Seq(3), FailureKind::BadSignature));
        assert_eq!(s.next_version(), 1);
        assert_eq!(s.at(0).unwrap(), vec![ALICE]);
    }

    #[test]
    fn every_tampering_is_named_with_its_kind() {
        let b = ledger();
        let keys = trusting(&b);
        let kind = |change: &dyn Fn(&mut Vec<Record>)| {
            let mut records = of_acct(&b);
            change(&mut records);
            let f = verify(&records, &keys).unwrap_err();
            (f.seq, f.kind)
        };
        // A deleted row is a gap.
        assert_eq!(
            kind(&|r| {
                r.remove(1);
            }),
            (Seq(3), FailureKind::StreamVersionGap)
        );
        // A row of another stream, even correctly signed.
        let other = b.records[1].clone();
        assert_eq!(
            kind(&|r| r.insert(1, other.clone())),
            (Seq(1), FailureKind::StreamVersionGap)
        );
        assert_eq!(
            kind(&|r| r[1].payload = None),
            (Seq(2), FailureKind::MissingPayload)
        );
        assert_eq!(
            kind(&|r| r[1].payload.as_mut().unwrap().0[0] ^= 1),
            (Seq(2), FailureKind::PayloadDigestMismatch)
        );
        assert_eq!(
            kind(&|r| r[0].entry.header.subject = Some(BOB)),
            (Seq(0), FailureKind::EntryHashMismatch)
        );
        assert_eq!(
            kind(&|r| r[2].signature.0[5] ^= 1),
            (Seq(3), FailureKind::BadSignature)
        );
    }

    #[test]
    fn only_trusted_keys_of_this_ledger_count() {
        let b = ledger();
        let records = of_acct(&b);
        // Re-signed by a key the caller does not trust.
        let stranger = LedgerSigningKey::generate();
        let mut forged = records.clone();
        forged[1].signature = stranger.sign_entry(&forged[1].entry_hash);
        forged[1].key_id = stranger.key_id();
        let f = verify(&forged, &trusting(&b)).unwrap_err();
        assert_eq!((f.seq, f.kind), (Seq(2), FailureKind::UnknownKey));
        // A key trusted only for an earlier range.
        let mut ranged = TrustedKeys::new();
        ranged.insert_ranged(
            b.key.public_key(),
            KeyRange {
                first: 0,
                last: Some(1),
            },
        );
        let f = verify(&records, &ranged).unwrap_err();
        assert_eq!((f.seq, f.kind), (Seq(2), FailureKind::KeyOutOfRange));
        // Another ledger's identity.
        let mut s = StreamSubjects::new(acct(), 64);
        let f = s
            .extend(&records, &trusting(&b), LedgerId([0x2e; 16]))
            .unwrap_err();
        assert_eq!((f.seq, f.kind), (Seq(0), FailureKind::LedgerMismatch));
    }

    #[test]
    fn a_legacy_entry_counts_only_before_the_streams_first_v2_entry() {
        let mut b = Builder::new(LedgerSigningKey::generate());
        let mut h = b.header("acct-1", "T", Some(ALICE));
        h.ledger_id = None;
        b.push_header(h, KeyRef::Subject(ALICE));
        b.event("acct-1", None);
        let mut h = b.header("acct-1", "T", None);
        h.ledger_id = None;
        b.push_header(h, KeyRef::System([0; 16]));
        let keys = trusting(&b);
        let mut s = StreamSubjects::new(acct(), 64);
        let f = s.extend(&b.records, &keys, LEDGER).unwrap_err();
        assert_eq!((f.seq, f.kind), (Seq(2), FailureKind::LedgerMismatch));
        s.extend(&b.records[..2], &keys, LEDGER).unwrap();
        assert_eq!(s.at(1).unwrap(), vec![ALICE]);
        // Also when the v2 entry was verified by an earlier page.
        let f = s.extend(&b.records[2..], &keys, LEDGER).unwrap_err();
        assert_eq!((f.seq, f.kind), (Seq(2), FailureKind::LedgerMismatch));
    }

    #[test]
    fn more_subjects_than_the_limit_are_refused_from_the_version_that_passes_it() {
        let mut b = Builder::new(LedgerSigningKey::generate());
        for i in 0..5u8 {
            b.event("acct-1", Some(SubjectHandle([i; 16])));
        }
        let mut s = StreamSubjects::new(acct(), 2);
        s.extend(&b.records, &trusting(&b), LEDGER).unwrap();
        assert_eq!(s.at(1).unwrap().len(), 2);
        for v in 2..5 {
            assert_eq!(s.at(v), Err(SubjectsUnknown::TooMany { limit: 2 }));
        }
        // Only what answers those questions is kept.
        assert_eq!(s.first_named.len(), 3);
    }
}
