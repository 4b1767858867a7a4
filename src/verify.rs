//! Chain verification: the one set of checks that `auditledger verify`, the server and the
//! offline verifier all run. Pure: it is fed records and trusted public keys, and does no I/O.
//!
//! For each record, in order, it checks:
//! 1. its `seq` is the next expected one (a missing, inserted or reordered row breaks this);
//! 2. its `prev_hash` equals the previous record's `entry_hash` (or the genesis value);
//! 3. if the sealed payload is present, SHA-256 of it equals `payload_digest`;
//! 4. the entry hash recomputed from the fields equals the stored `entry_hash`;
//! 5. its key id names a trusted key, and the signature verifies under it (strict RFC 8032).
//!
//! The first check that fails is reported with the record's position and a [`FailureKind`].
//! A tampered ledger is a result of verification, not an error of it.

use std::collections::BTreeMap;
use std::fmt;

use crate::crypto::{KeyId, PublicKey};
use crate::entry::{EntryHash, GENESIS_PREV_HASH, Seq};
use crate::record::Record;

/// The public keys a verifier trusts, by id.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys(BTreeMap<KeyId, PublicKey>);

impl TrustedKeys {
    /// An empty set.
    #[must_use]
    pub fn new() -> TrustedKeys {
        TrustedKeys::default()
    }

    /// Adds a key under its own id.
    pub fn insert(&mut self, key: PublicKey) {
        self.0.insert(key.key_id(), key);
    }

    /// The key with this id, if trusted.
    #[must_use]
    pub fn find(&self, id: &KeyId) -> Option<&PublicKey> {
        self.0.get(id)
    }

    /// Whether no key is trusted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What is wrong with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The record at this position is missing, or another seq stands where it should be.
    SeqMismatch,
    /// `prev_hash` does not equal the previous entry's hash.
    BrokenLink,
    /// The sealed payload does not hash to `payload_digest`.
    PayloadDigestMismatch,
    /// The fields do not hash to the stored `entry_hash`.
    EntryHashMismatch,
    /// The key id names no trusted key.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// A stored row does not decode into a record (a column out of shape).
    MalformedRecord,
    /// A checkpoint's signature does not verify, or its key is not trusted.
    BadCheckpointSignature,
    /// A checkpoint's root (or last entry hash) is not what the entries hash to.
    CheckpointMismatch,
    /// Entries that a signed checkpoint covers are missing: the tail was cut off, or the
    /// database was rolled back to an older copy.
    Truncated,
    /// A data key exists for a subject that was erased: restored from an old copy.
    RestoredErasedKey,
}

impl FailureKind {
    /// A stable, machine-readable name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::SeqMismatch => "seq_mismatch",
            FailureKind::BrokenLink => "broken_link",
            FailureKind::PayloadDigestMismatch => "payload_digest_mismatch",
            FailureKind::EntryHashMismatch => "entry_hash_mismatch",
            FailureKind::UnknownKey => "unknown_key",
            FailureKind::BadSignature => "bad_signature",
            FailureKind::MalformedRecord => "malformed_record",
            FailureKind::BadCheckpointSignature => "bad_checkpoint_signature",
            FailureKind::CheckpointMismatch => "checkpoint_mismatch",
            FailureKind::Truncated => "truncated",
            FailureKind::RestoredErasedKey => "restored_erased_key",
        }
    }
}

impl FailureKind {
    /// Every kind, for parsing.
    pub const ALL: [FailureKind; 11] = [
        FailureKind::SeqMismatch,
        FailureKind::BrokenLink,
        FailureKind::PayloadDigestMismatch,
        FailureKind::EntryHashMismatch,
        FailureKind::UnknownKey,
        FailureKind::BadSignature,
        FailureKind::MalformedRecord,
        FailureKind::BadCheckpointSignature,
        FailureKind::CheckpointMismatch,
        FailureKind::Truncated,
        FailureKind::RestoredErasedKey,
    ];

    /// The kind named `s`.
    #[must_use]
    pub fn parse(s: &str) -> Option<FailureKind> {
        FailureKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first failure found: where, what kind, and a sentence for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Position of the bad record (for a missing record, the position where it should be).
    pub seq: Seq,
    /// What is wrong.
    pub kind: FailureKind,
    /// Human-readable detail.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {}: {}: {}", self.seq, self.kind, self.detail)
    }
}

/// Checks records one at a time, in order, in constant memory.
#[derive(Debug)]
pub struct ChainVerifier<'k> {
    keys: &'k TrustedKeys,
    next_seq: Seq,
    prev_hash: EntryHash,
    checked: u64,
}

impl<'k> ChainVerifier<'k> {
    /// A verifier that expects the log to start at seq 0.
    #[must_use]
    pub fn new(keys: &'k TrustedKeys) -> ChainVerifier<'k> {
        ChainVerifier::resume(keys, Seq(0), GENESIS_PREV_HASH)
    }

    /// A verifier that expects `next_seq` next, chaining to `prev_hash` (for checking a range
    /// whose predecessor has already been checked).
    #[must_use]
    pub fn resume(keys: &'k TrustedKeys, next_seq: Seq, prev_hash: EntryHash) -> ChainVerifier<'k> {
        ChainVerifier {
            keys,
            next_seq,
            prev_hash,
            checked: 0,
        }
    }

    /// How many records have passed.
    #[must_use]
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// The seq the next record must have.
    #[must_use]
    pub fn next_seq(&self) -> Seq {
        self.next_seq
    }

    /// Checks the next record, signature included.
    pub fn check(&mut self, record: &Record) -> Result<(), Failure> {
        self.check_structure(record)?;
        self.check_signature(record)
    }

    /// Checks a record's signature alone (for a record that passed [`Self::check_structure`]).
    pub fn check_signature(&self, record: &Record) -> Result<(), Failure> {
        let fail = |kind, detail: String| Failure {
            seq: record.entry.header.seq,
            kind,
            detail,
        };
        let Some(key) = self.keys.find(&record.key_id) else {
            return Err(fail(
                FailureKind::UnknownKey,
                format!("signed by key {}, which is not trusted", record.key_id),
            ));
        };
        key.verify_entry(&record.entry_hash, &record.signature)
            .map_err(|_| {
                fail(
                    FailureKind::BadSignature,
                    format!("the signature does not verify under key {}", record.key_id),
                )
            })
    }

    /// Checks everything but the signature (seq, link, digest, hash, trusted key) and advances;
    /// the caller checks signatures, e.g. in batches.
    pub fn check_structure(&mut self, record: &Record) -> Result<(), Failure> {
        let expected = self.next_seq;
        let fail = |kind, detail: String| Failure {
            seq: expected,
            kind,
            detail,
        };
        let seq = record.entry.header.seq;
        if seq != expected {
            return Err(fail(
                FailureKind::SeqMismatch,
                format!("expected the entry at seq {expected}, found seq {seq}"),
            ));
        }
        if record.entry.prev_hash != self.prev_hash {
            return Err(fail(
                FailureKind::BrokenLink,
                format!(
                    "prev_hash {} does not equal the previous entry hash {}",
                    record.entry.prev_hash.to_hex(),
                    self.prev_hash.to_hex()
                ),
            ));
        }
        if let Some(payload) = &record.payload
            && payload.digest() != record.entry.payload_digest
        {
            return Err(fail(
                FailureKind::PayloadDigestMismatch,
                "the sealed payload does not hash to payload_digest".to_owned(),
            ));
        }
        let computed = record.entry.hash();
        if computed != record.entry_hash {
            return Err(fail(
                FailureKind::EntryHashMismatch,
                format!(
                    "the fields hash to {}, the stored entry_hash is {}",
                    computed.to_hex(),
                    record.entry_hash.to_hex()
                ),
            ));
        }
        if self.keys.find(&record.key_id).is_none() {
            return Err(fail(
                FailureKind::UnknownKey,
                format!("signed by key {}, which is not trusted", record.key_id),
            ));
        }
        self.prev_hash = record.entry_hash;
        self.next_seq = expected.next();
        self.checked += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::{DataKey, KeyRef, LedgerSigningKey, seal};
    use crate::entry::{Entry, EntryHeader, EventType, Metadata, StreamId};

    fn chain(key: &LedgerSigningKey, n: u64) -> Vec<Record> {
        let dek = DataKey::generate();
        let mut prev = GENESIS_PREV_HASH;
        (0..n)
            .map(|i| {
                let header = EntryHeader {
                    seq: Seq(i),
                    stream_id: StreamId::parse("s").unwrap(),
                    stream_version: i,
                    event_type: EventType::parse("T").unwrap(),
                    schema_version: 1,
                    subject: None,
                    recorded_at_micros: 1,
                    metadata: Metadata::new(),
                };
                let payload = seal(&dek, &KeyRef::System([0; 16]), &header.payload_aad(), b"{}");
                let entry = Entry {
                    header,
                    payload_digest: payload.digest(),
                    prev_hash: prev,
                };
                let entry_hash = entry.hash();
                prev = entry_hash;
                Record {
                    entry,
                    payload: Some(payload),
                    entry_hash,
                    signature: key.sign_entry(&entry_hash),
                    key_id: key.key_id(),
                }
            })
            .collect()
    }

    fn first_failure(keys: &TrustedKeys, records: &[Record]) -> Option<Failure> {
        let mut v = ChainVerifier::new(keys);
        records.iter().find_map(|r| v.check(r).err())
    }

    #[test]
    fn each_kind_of_tampering_is_named_at_its_position() {
        let key = LedgerSigningKey::generate();
        let mut keys = TrustedKeys::new();
        keys.insert(key.public_key());
        let good = chain(&key, 5);
        assert_eq!(first_failure(&keys, &good), None);

        let mut r = good.clone();
        r.remove(2);
        let f = first_failure(&keys, &r).unwrap();
        assert_eq!((f.seq, f.kind), (Seq(2), FailureKind::SeqMismatch));

        let mut r = good.clone();
        r[3].entry.header.stream_version = 99;
        let f = first_failure(&keys, &r).unwrap();
        assert_eq!((f.seq, f.kind), (Seq(3), FailureKind::EntryHashMismatch));

        let mut r = good.clone();
        r[1].payload.as_mut().unwrap().0[5] ^= 1;
        let f = first_failure(&keys, &r).unwrap();
        assert_eq!(
            (f.seq, f.kind),
            (Seq(1), FailureKind::PayloadDigestMismatch)
        );

        let mut r = good.clone();
        r[4].signature = r[3].signature;
        let f = first_failure(&keys, &r).unwrap();
        assert_eq!((f.seq, f.kind), (Seq(4), FailureKind::BadSignature));

        let mut r = good.clone();
        r[2].entry.prev_hash = EntryHash([7; 32]);
        let f = first_failure(&keys, &r).unwrap();
        assert_eq!((f.seq, f.kind), (Seq(2), FailureKind::BrokenLink));

        let f = first_failure(&TrustedKeys::new(), &good).unwrap();
        assert_eq!((f.seq, f.kind), (Seq(0), FailureKind::UnknownKey));
    }
}
