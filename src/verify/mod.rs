//! Ledger verification: the one set of checks that `auditledger verify`, the server and the
//! offline verifier all run. Pure: it is fed records, checkpoints and what the caller trusts
//! (public keys with their ranges, the ledger's identity, a kept checkpoint), and does no I/O.
//!
//! For each record, in order ([`Verifier::push_record`]):
//! 1. its `seq` is the next expected one (a missing, inserted or reordered row breaks this);
//! 2. its `prev_hash` equals the previous record's `entry_hash` (or the genesis value);
//! 3. its sealed payload is present, and hashes to `payload_digest`;
//! 4. the entry hash recomputed from the fields equals the stored `entry_hash`;
//! 5. it belongs to this ledger (v2 ledger id; no legacy v1 entry after a v2 one);
//! 6. the key that signed it is the one the chain's key schedule says signs this seq, is
//!    trusted (or anchored) and, if the auditor gave a range, signs inside it;
//! 7. the chain's invariants ([`invariants`]): sealed under the right key, time never runs
//!    backwards, stream versions dense, reserved streams hold only the ledger's own entries, an
//!    erased handle never appears again; a rotation entry hands over validly;
//! 8. its signature verifies (ZIP-215; deferred and checked in parallel batches, a round at a
//!    time in the background while the records after it are checked).
//!
//! Checkpoints ([`Verifier::push_checkpoint`]) must come right after the entry that completes
//! them, be signed by the key of their position, chain to the previous checkpoint, and match the
//! Merkle root recomputed from the entries.
//!
//! The first check that fails is reported with the position and a [`FailureKind`]. A tampered
//! ledger is a result of verification, not an error of it. What an "ok" proved is returned as
//! [`Proven`].

pub mod invariants;
pub mod keys;
pub mod stream;
pub mod vault;

use std::collections::BTreeMap;
use std::fmt;

use rayon::prelude::*;

use crate::checkpoint::Checkpoint;
use crate::crypto::{KeyId, PublicKey, SealedPayload, Signature, verify_entries_batch};
use crate::entry::{EntryHash, GENESIS_PREV_HASH, LedgerId, PayloadDigest, Seq};
use crate::merkle::{CompactRange, MerkleHash, leaf_hash};
use crate::record::Record;
use crate::rotation::{Rotation, RotationPoint};

pub use keys::{KeyRange, KeyUse, Trust, TrustedKey, TrustedKeys};

/// Signatures verified per batch; batches run on all cores.
pub const SIGNATURE_BATCH: usize = 256;
/// Batches gathered before a parallel verification round.
const BATCHES_PER_ROUND: usize = 32;

macro_rules! failure_kinds {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// What is wrong. Each kind has a stable, machine-readable name (docs/FORMAT.md §5).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum FailureKind {
            $($(#[$doc])* $variant,)*
        }

        impl FailureKind {
            /// Every kind, for parsing.
            pub const ALL: &'static [FailureKind] = &[$(FailureKind::$variant,)*];

            /// The stable name.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $(FailureKind::$variant => $name,)*
                }
            }
        }
    };
}

failure_kinds! {
    /// The record at this position is missing, or another seq stands where it should be.
    SeqMismatch => "seq_mismatch",
    /// `prev_hash` does not equal the previous entry's hash.
    BrokenLink => "broken_link",
    /// The sealed payload is absent. Nothing purges payloads, so this is always tampering
    /// (an erased subject's payload stays, unreadable without its destroyed key).
    MissingPayload => "missing_payload",
    /// The sealed payload does not hash to `payload_digest`.
    PayloadDigestMismatch => "payload_digest_mismatch",
    /// The fields do not hash to the stored `entry_hash`.
    EntryHashMismatch => "entry_hash_mismatch",
    /// The entry or checkpoint belongs to another ledger, or a legacy v1 entry or checkpoint
    /// follows a v2 one.
    LedgerMismatch => "ledger_mismatch",
    /// The key id names no trusted key, and no rotation anchors it to one.
    UnknownKey => "unknown_key",
    /// Signed by a trusted key outside its range: not the key the chain's schedule names for
    /// this position, or outside the range the auditor gave for it.
    KeyOutOfRange => "key_out_of_range",
    /// A signing-key rotation entry that does not hand over validly (malformed, or the new
    /// key's countersignature does not verify).
    BadKeyRotation => "bad_key_rotation",
    /// The signature does not verify.
    BadSignature => "bad_signature",
    /// A stored row or bundle line does not decode into a record (a field out of shape).
    MalformedRecord => "malformed_record",
    /// The payload is sealed under a key the header does not call for (a subject-less entry not
    /// under the system key, a subject's entry not under that subject's key).
    PayloadKeyMismatch => "payload_key_mismatch",
    /// `recorded_at` is earlier than the previous entry's.
    TimeReversal => "time_reversal",
    /// A stream's versions are not dense from 0.
    StreamVersionGap => "stream_version_gap",
    /// An entry in an `auditledger:` stream that is not one of the ledger's own entry types.
    ReservedStream => "reserved_stream",
    /// An entry names a subject handle whose erasure is earlier in the chain.
    ErasedHandleReused => "erased_handle_reused",
    /// A checkpoint's signature does not verify, or its key is not trusted.
    BadCheckpointSignature => "bad_checkpoint_signature",
    /// A checkpoint's root (or last entry hash) is not what the entries hash to, or it stands
    /// out of place.
    CheckpointMismatch => "checkpoint_mismatch",
    /// A checkpoint names a previous checkpoint that is not there: one was deleted.
    MissingCheckpoint => "missing_checkpoint",
    /// Two checkpoints of the same tree size.
    DuplicateCheckpoint => "duplicate_checkpoint",
    /// Entries that something signed (a checkpoint, stored or kept by the auditor; a bundle's
    /// own header) covers are missing: the tail was cut off, or the database was rolled back.
    Truncated => "truncated",
    /// A data key is missing from the vault although no erasure of its subject is in the chain.
    MissingKey => "missing_key",
    /// A data key exists for a subject whose erasure is in the chain: restored from an old copy.
    RestoredErasedKey => "restored_erased_key",
    /// A bundle's key line disagrees with the trusted key of that id or with the chain's use of
    /// the key (its range).
    KeyLineMismatch => "key_line_mismatch",
    /// A bundle's header or footer claims something its lines do not hold.
    BundleMismatch => "bundle_mismatch",
}

impl FailureKind {
    /// The kind named `s`.
    #[must_use]
    pub fn parse(s: &str) -> Option<FailureKind> {
        FailureKind::ALL.iter().copied().find(|k| k.as_str() == s)
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

impl Failure {
    /// A failure at `seq`.
    #[must_use]
    pub fn new(seq: Seq, kind: FailureKind, detail: impl Into<String>) -> Failure {
        Failure {
            seq,
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {}: {}: {}", self.seq, self.kind, self.detail)
    }
}

/// Where the records to come start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    /// The first seq.
    pub seq: Seq,
    /// `entry_hash` of the entry before it (genesis value at 0).
    pub prev_hash: EntryHash,
    /// The Merkle tree's right edge at size `seq` (empty at 0), largest subtree first.
    pub frontier: Vec<MerkleHash>,
}

impl Start {
    /// The start of a ledger.
    #[must_use]
    pub fn genesis() -> Start {
        Start {
            seq: Seq(0),
            prev_hash: GENESIS_PREV_HASH,
            frontier: Vec::new(),
        }
    }
}

/// What the caller trusts.
#[derive(Clone, Debug, Default)]
pub struct Trusted {
    /// Public keys, with the ranges the caller knows.
    pub keys: TrustedKeys,
    /// The ledger's identity, if the caller knows it; otherwise it is taken from the first v2
    /// entry (and [`Proven::ledger_id_trusted`] says so).
    pub ledger_id: Option<LedgerId>,
    /// A checkpoint the caller kept from earlier: the history verified must extend it.
    pub checkpoint: Option<Checkpoint>,
    /// Public keys the verifier may use to check signatures but does not trust by themselves
    /// (a bundle's key lines when the auditor named keys): they need anchoring.
    pub candidates: Vec<PublicKey>,
}

/// What a verification that passed has proven.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proven {
    /// The ledger identity every v2 entry and checkpoint carries.
    pub ledger_id: Option<LedgerId>,
    /// Whether that identity came from the caller (`false`: from the entries themselves).
    pub ledger_id_trusted: bool,
    /// Where verification started (entries before it, and the hash and tree edge at it, were
    /// taken on trust unless `trusted_checkpoint` matched at exactly this size).
    pub start: Seq,
    /// Entries verified.
    pub entries: u64,
    /// First and last seq verified, if any entry.
    pub range: Option<(u64, u64)>,
    /// Checkpoints verified.
    pub checkpoints: u64,
    /// Tree size of the last checkpoint verified, if any.
    pub last_checkpoint: Option<u64>,
    /// Entries after the last checkpoint verified (or after the start, if none): no signature
    /// over the tree covers them, so their removal could not be seen from the entries alone.
    pub uncovered_tail: u64,
    /// The size at which the caller's kept checkpoint was found in this history.
    pub trusted_checkpoint_matched: Option<u64>,
    /// Each signing key used, in order of use.
    pub keys: Vec<KeyUse>,
}

/// What the verifier recomputes from one record by itself: the sealed payload's digest, the
/// entry hash from the fields, and the Merkle leaf of the stored entry hash. None of it depends
/// on the records before, so it can be computed ahead, for many records at once on every core
/// ([`Hashed`]), while the checks that do depend on them stay in order.
#[derive(Clone, Copy, Debug)]
struct Digests {
    payload: Option<PayloadDigest>,
    entry: EntryHash,
    leaf: MerkleHash,
}

impl Digests {
    fn of(record: &Record) -> Digests {
        Digests {
            payload: record.payload.as_ref().map(SealedPayload::digest),
            entry: record.entry.hash(),
            leaf: leaf_hash(&record.entry_hash.0),
        }
    }
}

/// A record with its digests computed (the payload's, the entry hash, the Merkle leaf), ready
/// for [`Verifier::push_hashed`]: build many on every core (`rayon`), push them in order. Only
/// built here, from the record it holds, so a caller cannot pair a record with digests of its
/// own.
#[derive(Debug)]
pub struct Hashed {
    record: Record,
    digests: Digests,
}

impl Hashed {
    /// Hashes one record.
    #[must_use]
    pub fn new(record: Record) -> Hashed {
        let digests = Digests::of(&record);
        Hashed { record, digests }
    }

    /// The record.
    #[must_use]
    pub fn record(&self) -> &Record {
        &self.record
    }
}

/// A key the verifier can check signatures with.
#[derive(Clone, Copy, Debug)]
struct Known {
    key: PublicKey,
    direct: bool,
}

/// Checks a ledger (or a range of it) record by record, in constant memory but for the
/// per-stream and per-subject state the invariants need.
#[derive(Debug)]
pub struct Verifier {
    trusted: Trusted,
    known: BTreeMap<KeyId, Known>,
    start: Seq,
    next_seq: Seq,
    prev_hash: EntryHash,
    tree: CompactRange,
    ledger_id: Option<LedgerId>,
    /// The position from which every entry is v2: the first v2 entry or v2 checkpoint seen
    /// (only the v2 code makes them, and it writes only v2 entries).
    v2_from: Option<u64>,
    invariants: invariants::Invariants,
    /// The key that signs the next entry, once known, and whether it is trusted or anchored.
    active: Option<(KeyId, bool)>,
    /// First seq signed by a key not (yet) anchored to a trusted one.
    unanchored_from: Option<Seq>,
    key_uses: Vec<KeyUse>,
    /// Signatures queued for the next round, each with the key the checks resolved for it.
    pending: Vec<PendingSignature>,
    /// The round being verified in the background, if any: its first seq, and where its
    /// result arrives (the first bad signature, or none).
    in_flight: Option<(Seq, RoundResult)>,
    entries: u64,
    checkpoints: u64,
    last_checkpoint: Option<u64>,
    trusted_matched: Option<u64>,
    /// The key the trusted checkpoint says signs the first entry (it was kept at the start).
    start_key: Option<KeyId>,
    /// The batch rule (ZIP-215 batch verification); replaceable in tests, to show that a batch
    /// that fails is a failure whatever single verification says.
    batch: BatchRule,
}

/// Verifies a batch of entry signatures: `true` only if all verify.
type BatchRule = fn(&[(&PublicKey, &EntryHash, &Signature)]) -> bool;

/// Where a background round's result arrives: its first bad signature, or none.
type RoundResult = std::sync::mpsc::Receiver<Option<(Seq, String)>>;

/// An entry's signature waiting for its round: seq, key id and key, entry hash, signature.
type PendingSignature = (Seq, KeyId, PublicKey, EntryHash, Signature);

/// The first bad signature of `pending` (by seq), verified in batches on every core. A batch
/// that fails is a failure even if no single signature in it does (fail closed).
fn first_bad_signature(pending: &[PendingSignature], batch: BatchRule) -> Option<(Seq, String)> {
    pending
        .par_chunks(SIGNATURE_BATCH)
        .filter_map(|chunk| {
            let items: Vec<_> = chunk.iter().map(|(_, _, k, h, s)| (k, h, s)).collect();
            if batch(&items) {
                return None;
            }
            // Which one? Check singly, by the same rule.
            let single = chunk.iter().find_map(|(seq, id, k, h, s)| {
                (k.verify_entry(h, s).is_err()).then(|| {
                    (
                        *seq,
                        format!("the signature does not verify under key {id}"),
                    )
                })
            });
            Some(single.unwrap_or_else(|| {
                (
                    chunk[0].0,
                    "batch verification of the signatures from this seq failed, although none failed alone: refusing to accept them".to_owned(),
                )
            }))
        })
        .min_by_key(|(seq, _)| *seq)
}

impl Verifier {
    /// A verifier of records from `start` on, trusting what `trusted` names.
    ///
    /// # Errors
    /// The frontier does not fit `start.seq`.
    pub fn new(trusted: Trusted, start: &Start) -> Result<Verifier, Failure> {
        let tree = CompactRange::from_hashes(start.seq.0, &start.frontier).map_err(|_| {
            Failure::new(
                start.seq,
                FailureKind::BundleMismatch,
                format!(
                    "the Merkle frontier has {} hashes, but a tree of {} entries has {} perfect subtrees on its edge",
                    start.frontier.len(),
                    start.seq,
                    crate::merkle::decompose(0, start.seq.0).len()
                ),
            )
        })?;
        if start.seq.0 == 0 && start.prev_hash != GENESIS_PREV_HASH {
            return Err(Failure::new(
                Seq(0),
                FailureKind::BundleMismatch,
                "a history that starts at seq 0 must start from the genesis hash (32 zero bytes)",
            ));
        }
        let mut known = BTreeMap::new();
        for k in &trusted.candidates {
            known.insert(
                k.key_id(),
                Known {
                    key: *k,
                    direct: false,
                },
            );
        }
        for t in trusted.keys.iter() {
            known.insert(
                t.key.key_id(),
                Known {
                    key: t.key,
                    direct: true,
                },
            );
        }
        let from_genesis = start.seq.0 == 0;
        let mut v = Verifier {
            ledger_id: trusted.ledger_id,
            trusted,
            known,
            start: start.seq,
            next_seq: start.seq,
            prev_hash: start.prev_hash,
            tree,
            v2_from: None,
            invariants: invariants::Invariants::new(from_genesis),
            active: None,
            unanchored_from: None,
            key_uses: Vec::new(),
            pending: Vec::new(),
            in_flight: None,
            entries: 0,
            checkpoints: 0,
            last_checkpoint: from_genesis.then_some(0),
            trusted_matched: None,
            batch: verify_entries_batch,
            start_key: None,
        };
        v.check_trusted_checkpoint_at_start()?;
        Ok(v)
    }

    /// Expects every v2 entry and checkpoint to carry `id` (a bundle header's claim, say).
    ///
    /// # Errors
    /// The caller already trusts another identity.
    pub fn expecting_ledger(mut self, id: LedgerId) -> Result<Verifier, Failure> {
        if let Some(expected) = self.ledger_id
            && expected != id
        {
            return Err(Failure::new(
                self.start,
                FailureKind::LedgerMismatch,
                format!("the history claims to be of ledger {id}, the verifier expects {expected}"),
            ));
        }
        self.ledger_id = Some(id);
        Ok(self)
    }

    /// Collects, for [`vault::check`], every key reference the payloads name.
    pub fn track_key_refs(&mut self) {
        self.invariants.track_key_refs();
    }

    /// The seq the next record must have.
    #[must_use]
    pub fn next_seq(&self) -> Seq {
        self.next_seq
    }

    /// Entries checked so far (signatures possibly still pending).
    #[must_use]
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The invariants' state (erased handles, key references seen).
    #[must_use]
    pub fn invariants(&self) -> &invariants::Invariants {
        &self.invariants
    }

    fn check_trusted_checkpoint_at_start(&mut self) -> Result<(), Failure> {
        let Some(cp) = self.trusted.checkpoint.clone() else {
            return Ok(());
        };
        self.check_checkpoint_binding(&cp)?;
        // The key may be one the auditor names, or one the history must anchor (a checkpoint
        // kept before a rotation is signed by the key that has since retired): `finish` checks
        // that it ends up trusted, and the position check happens where the history reaches it.
        let known = self.known.get(&cp.key_id).copied().ok_or_else(|| {
            Failure::new(
                Seq(cp.tree_size.saturating_sub(1)),
                FailureKind::BadCheckpointSignature,
                format!(
                    "the trusted checkpoint is signed by key {}, which is neither trusted nor in the bundle",
                    cp.key_id
                ),
            )
        })?;
        if self
            .trusted
            .keys
            .get(&cp.key_id)
            .and_then(|k| k.range)
            .is_some_and(|r| !r.contains(cp.tree_size))
        {
            return Err(Failure::new(
                Seq(cp.tree_size.saturating_sub(1)),
                FailureKind::KeyOutOfRange,
                format!(
                    "the trusted checkpoint of size {} is signed by key {} outside its range",
                    cp.tree_size, cp.key_id
                ),
            ));
        }
        cp.verify(&known.key).map_err(|e| {
            Failure::new(
                Seq(cp.tree_size.saturating_sub(1)),
                FailureKind::BadCheckpointSignature,
                format!("the trusted checkpoint: {e}"),
            )
        })?;
        if cp.tree_size == self.start.0 && cp.tree_size > 0 {
            // The key valid at this position signs the next entry.
            self.start_key = Some(cp.key_id);
            if cp.root_hash != self.tree.root() || cp.last_entry_hash != self.prev_hash {
                return Err(Failure::new(
                    Seq(cp.tree_size - 1),
                    FailureKind::CheckpointMismatch,
                    format!(
                        "the history before seq {} hashes to root {} and ends with entry hash {}, but the trusted checkpoint signs root {} and last entry hash {}",
                        self.start,
                        self.tree.root().to_hex(),
                        self.prev_hash.to_hex(),
                        cp.root_hash.to_hex(),
                        cp.last_entry_hash.to_hex()
                    ),
                ));
            }
            self.trusted_matched = Some(cp.tree_size);
        }
        Ok(())
    }

    /// A checkpoint's ledger identity and version, against the ledger's.
    fn check_checkpoint_binding(&mut self, cp: &Checkpoint) -> Result<(), Failure> {
        // A checkpoint of size n covers entries up to n - 1; entries from n on follow it.
        self.check_binding(
            Seq(cp.tree_size.saturating_sub(1)),
            cp.ledger_id(),
            cp.tree_size,
            &format!("checkpoint of size {}", cp.tree_size),
        )
    }

    /// One signed object's ledger identity: `last` is the last seq it covers, `v2_from` the
    /// position from which, if it is v2, every entry must be v2 (only the v2 code makes v2
    /// objects, and it writes only v2 entries).
    fn check_binding(
        &mut self,
        last: Seq,
        id: Option<LedgerId>,
        v2_from: u64,
        what: &str,
    ) -> Result<(), Failure> {
        match id {
            Some(id) => {
                if let Some(expected) = self.ledger_id
                    && expected != id
                {
                    return Err(Failure::new(
                        last,
                        FailureKind::LedgerMismatch,
                        format!("the {what} belongs to ledger {id}, not {expected}"),
                    ));
                }
                self.ledger_id = Some(id);
                self.v2_from = Some(self.v2_from.map_or(v2_from, |f| f.min(v2_from)));
            }
            None if self.v2_from.is_some_and(|f| last.0 >= f) => {
                return Err(Failure::new(
                    last,
                    FailureKind::LedgerMismatch,
                    format!("a legacy v1 {what} after v2 entries or a v2 checkpoint"),
                ));
            }
            None => {}
        }
        Ok(())
    }

    /// Checks the next record (its signature is deferred to a batch).
    ///
    /// # Errors
    /// The first failure, at the earliest position: signatures pending for earlier entries are
    /// checked before a failure of this one is reported.
    pub fn push_record(&mut self, record: &Record) -> Result<(), Failure> {
        self.push_digested(record, &Digests::of(record))
    }

    /// [`Verifier::push_record`] for a record hashed ahead ([`Hashed::all`]).
    ///
    /// # Errors
    /// As [`Verifier::push_record`].
    pub fn push_hashed(&mut self, hashed: &Hashed) -> Result<(), Failure> {
        self.push_digested(&hashed.record, &hashed.digests)
    }

    fn push_digested(&mut self, record: &Record, digests: &Digests) -> Result<(), Failure> {
        if let Err(f) = self.check_record(record, digests) {
            self.flush_signatures()?;
            return Err(f);
        }
        let seq = record.entry.header.seq;
        // `check_record` passed, so the key is known; fail closed all the same.
        let Some(known) = self.known.get(&record.key_id).copied() else {
            self.flush_signatures()?;
            return Err(Failure::new(
                seq,
                FailureKind::UnknownKey,
                format!("signed by key {}, which is not trusted", record.key_id),
            ));
        };
        self.pending.push((
            seq,
            record.key_id,
            known.key,
            record.entry_hash,
            record.signature,
        ));
        if self.pending.len() >= SIGNATURE_BATCH * BATCHES_PER_ROUND {
            self.start_round()?;
        }
        Ok(())
    }

    /// Hands the pending signatures to a round verified in the background (on rayon's threads),
    /// so that the checks of the entries after them go on meanwhile. At most one round is in
    /// flight: the one before is waited for first, and its failure reported.
    fn start_round(&mut self) -> Result<(), Failure> {
        self.join_round()?;
        let pending = std::mem::take(&mut self.pending);
        let Some(&(first, ..)) = pending.first() else {
            return Ok(());
        };
        let batch = self.batch;
        let (result, receiver) = std::sync::mpsc::sync_channel(1);
        rayon::spawn(move || {
            // The receiver is gone only if the verifier was dropped: nothing waits for this.
            let _ = result.send(first_bad_signature(&pending, batch));
        });
        self.in_flight = Some((first, receiver));
        Ok(())
    }

    /// Waits for the round in flight, if any; its first bad signature is a failure. A round
    /// that ends without a result (its thread failed) is a failure too: fail closed.
    fn join_round(&mut self) -> Result<(), Failure> {
        let Some((first, receiver)) = self.in_flight.take() else {
            return Ok(());
        };
        match receiver.recv() {
            Ok(None) => Ok(()),
            Ok(Some((seq, detail))) => Err(Failure::new(seq, FailureKind::BadSignature, detail)),
            Err(_) => Err(Failure::new(
                first,
                FailureKind::BadSignature,
                "the verification of the signatures from this seq did not finish: refusing to accept them",
            )),
        }
    }

    fn check_record(&mut self, record: &Record, digests: &Digests) -> Result<(), Failure> {
        let expected = self.next_seq;
        let fail = |kind, detail: String| Failure::new(expected, kind, detail);
        let header = &record.entry.header;
        if header.seq != expected {
            return Err(fail(
                FailureKind::SeqMismatch,
                format!(
                    "expected the entry at seq {expected}, found seq {}",
                    header.seq
                ),
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
        let Some(payload) = &record.payload else {
            return Err(fail(
                FailureKind::MissingPayload,
                "the sealed payload is missing; nothing purges payloads, so it was removed"
                    .to_owned(),
            ));
        };
        if digests.payload != Some(record.entry.payload_digest) {
            return Err(fail(
                FailureKind::PayloadDigestMismatch,
                "the sealed payload does not hash to payload_digest".to_owned(),
            ));
        }
        let computed = digests.entry;
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
        self.check_ledger(record)?;
        self.check_key(record)?;
        self.invariants.check(record, payload)?;
        if invariants::is_rotation(header) {
            self.rotate(record)?;
        }
        self.prev_hash = record.entry_hash;
        self.next_seq = expected.next();
        self.entries += 1;
        self.tree.append(digests.leaf, |_, _| {});
        self.check_trusted_reached()
    }

    fn check_ledger(&mut self, record: &Record) -> Result<(), Failure> {
        let seq = record.entry.header.seq;
        self.check_binding(seq, record.entry.header.ledger_id, seq.0, "entry")
    }

    fn check_key(&mut self, record: &Record) -> Result<(), Failure> {
        let seq = record.entry.header.seq;
        let id = record.key_id;
        if let Some(k) = self.start_key.take()
            && k != id
        {
            return Err(Failure::new(
                seq,
                FailureKind::KeyOutOfRange,
                format!("signed by key {id}, but the trusted checkpoint has key {k} signing here"),
            ));
        }
        let Some(known) = self.known.get(&id).copied() else {
            return Err(Failure::new(
                seq,
                FailureKind::UnknownKey,
                format!("signed by key {id}, which is not trusted"),
            ));
        };
        match self.active {
            Some((active, _)) if active != id => {
                return Err(Failure::new(
                    seq,
                    FailureKind::KeyOutOfRange,
                    format!(
                        "signed by key {id}, but the chain's key schedule has key {active} signing seq {seq}"
                    ),
                ));
            }
            Some(_) => {}
            None => {
                self.active = Some((id, known.direct));
                self.key_uses.push(KeyUse {
                    key_id: id,
                    first_seq: seq.0,
                    last_seq: None,
                    retired_at: None,
                    trust: if known.direct {
                        Trust::Direct
                    } else {
                        Trust::Unanchored
                    },
                });
            }
        }
        if let Some(range) = self.trusted.keys.get(&id).and_then(|t| t.range)
            && !range.contains(seq.0)
        {
            return Err(Failure::new(
                seq,
                FailureKind::KeyOutOfRange,
                format!("signed by key {id}, which is trusted only for positions {range}"),
            ));
        }
        if self.active.is_some_and(|(_, anchored)| !anchored) && self.unanchored_from.is_none() {
            self.unanchored_from = Some(seq);
        }
        if let Some(u) = self.key_uses.last_mut() {
            u.last_seq = Some(seq.0);
        }
        Ok(())
    }

    fn rotate(&mut self, record: &Record) -> Result<(), Failure> {
        let header = &record.entry.header;
        let seq = header.seq;
        let bad = |detail: String| Failure::new(seq, FailureKind::BadKeyRotation, detail);
        let Some(ledger_id) = header.ledger_id else {
            return Err(bad("a rotation entry must be a v2 entry".to_owned()));
        };
        let rotation = Rotation::from_metadata(&header.metadata).map_err(|e| bad(e.to_string()))?;
        let old = self
            .known
            .get(&record.key_id)
            .copied()
            .ok_or_else(|| bad(format!("signed by unknown key {}", record.key_id)))?;
        rotation
            .verify(&RotationPoint {
                ledger_id,
                seq,
                prev_hash: record.entry.prev_hash,
                old_key: old.key,
            })
            .map_err(|e| bad(e.to_string()))?;
        let new_id = rotation.new_key.key_id();
        let first = seq.0.saturating_add(1);
        // A key the auditor trusts only within a range is trusted as the new key only if that
        // range starts the key here: otherwise the holder of a retired key could hand over
        // from a key of their own back to it, and have that key "anchored".
        if let Some(range) = self.trusted.keys.get(&new_id).and_then(|t| t.range)
            && !range.contains(first)
        {
            return Err(Failure::new(
                seq,
                FailureKind::KeyOutOfRange,
                format!(
                    "hands over to key {new_id} from seq {first}, outside the range {range} it is trusted for"
                ),
            ));
        }
        let new_direct = self.trusted.keys.get(&new_id).is_some();
        let old_anchored = self.active.is_some_and(|(_, a)| a);
        if new_direct && !old_anchored {
            // The trusted new key countersigned exactly this history: it vouches for every
            // key that signed before it.
            self.unanchored_from = None;
            for u in &mut self.key_uses {
                if u.trust == Trust::Unanchored {
                    u.trust = Trust::Anchored;
                }
            }
        }
        // Trust never flows forward: a key handed over to is trusted only if the auditor names
        // it, or a later rotation hands over from it to one the auditor names. (Otherwise the
        // holder of a retired key could, inside its range, hand over to a key of its own.)
        let new_anchored = new_direct;
        self.known.insert(
            new_id,
            Known {
                key: rotation.new_key,
                direct: new_direct,
            },
        );
        if let Some(u) = self.key_uses.last_mut() {
            u.retired_at = Some(seq.0);
        }
        self.key_uses.push(KeyUse {
            key_id: new_id,
            first_seq: first,
            last_seq: None,
            retired_at: None,
            trust: if new_direct {
                Trust::Direct
            } else if new_anchored {
                Trust::Anchored
            } else {
                Trust::Unanchored
            },
        });
        self.active = Some((new_id, new_anchored));
        Ok(())
    }

    fn check_trusted_reached(&mut self) -> Result<(), Failure> {
        let size = self.tree.size();
        let Some(cp) = &self.trusted.checkpoint else {
            return Ok(());
        };
        if cp.tree_size != size || self.trusted_matched.is_some() {
            return Ok(());
        }
        if cp.root_hash != self.tree.root() || cp.last_entry_hash != self.prev_hash {
            return Err(Failure::new(
                Seq(size - 1),
                FailureKind::CheckpointMismatch,
                format!(
                    "the first {size} entries hash to root {} and end with entry hash {}, but the trusted checkpoint signs root {} and last entry hash {}: history was rewritten",
                    self.tree.root().to_hex(),
                    self.prev_hash.to_hex(),
                    cp.root_hash.to_hex(),
                    cp.last_entry_hash.to_hex()
                ),
            ));
        }
        if let Some((active, _)) = self.active
            && active != cp.key_id
        {
            return Err(Failure::new(
                Seq(size - 1),
                FailureKind::KeyOutOfRange,
                format!(
                    "the trusted checkpoint of size {size} is signed by key {}, but key {active} signs at that position",
                    cp.key_id
                ),
            ));
        }
        self.trusted_matched = Some(size);
        Ok(())
    }

    /// Checks a checkpoint, which must complete the entries pushed so far.
    ///
    /// # Errors
    /// The first failure (pending signatures of earlier entries first).
    pub fn push_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), Failure> {
        if let Err(f) = self.check_checkpoint(cp) {
            self.flush_signatures()?;
            return Err(f);
        }
        Ok(())
    }

    fn check_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), Failure> {
        let size = self.tree.size();
        let seq = Seq(cp.tree_size.saturating_sub(1));
        let fail = |kind, detail: String| Failure::new(seq, kind, detail);
        if Some(cp.tree_size) == self.last_checkpoint {
            return Err(fail(
                FailureKind::DuplicateCheckpoint,
                format!("a second checkpoint of tree size {}", cp.tree_size),
            ));
        }
        if cp.tree_size != size || size == self.start.0 {
            return Err(fail(
                FailureKind::CheckpointMismatch,
                format!(
                    "checkpoint of tree size {} stands after entry {}: out of place",
                    cp.tree_size,
                    size.saturating_sub(1)
                ),
            ));
        }
        self.check_checkpoint_binding(cp)?;
        let Some(known) = self.known.get(&cp.key_id).copied() else {
            return Err(fail(
                FailureKind::BadCheckpointSignature,
                format!(
                    "checkpoint of tree size {} signed by untrusted key {}",
                    cp.tree_size, cp.key_id
                ),
            ));
        };
        if let Some((active, anchored)) = self.active {
            if active != cp.key_id {
                return Err(fail(
                    FailureKind::KeyOutOfRange,
                    format!(
                        "checkpoint of tree size {} signed by key {}, but key {active} signs at that position",
                        cp.tree_size, cp.key_id
                    ),
                ));
            }
            if !anchored && self.unanchored_from.is_none() {
                self.unanchored_from = Some(seq);
            }
        }
        if let Some(range) = self.trusted.keys.get(&cp.key_id).and_then(|t| t.range)
            && !range.contains(cp.tree_size)
        {
            return Err(fail(
                FailureKind::KeyOutOfRange,
                format!(
                    "checkpoint of tree size {} signed by key {}, which is trusted only for positions {range}",
                    cp.tree_size, cp.key_id
                ),
            ));
        }
        cp.verify(&known.key).map_err(|e| {
            fail(
                FailureKind::BadCheckpointSignature,
                format!("checkpoint at tree size {}: {e}", cp.tree_size),
            )
        })?;
        self.check_checkpoint_chain(cp)?;
        if cp.root_hash != self.tree.root() || cp.last_entry_hash != self.prev_hash {
            return Err(fail(
                FailureKind::CheckpointMismatch,
                format!(
                    "the entries hash to root {} and end with entry hash {}, but the checkpoint at tree size {size} signs root {} and last entry hash {}",
                    self.tree.root().to_hex(),
                    self.prev_hash.to_hex(),
                    cp.root_hash.to_hex(),
                    cp.last_entry_hash.to_hex()
                ),
            ));
        }
        self.checkpoints += 1;
        self.last_checkpoint = Some(cp.tree_size);
        Ok(())
    }

    /// A v2 checkpoint names its predecessor: the one verified before it (or, first in a partial
    /// range, one at or before the start).
    fn check_checkpoint_chain(&self, cp: &Checkpoint) -> Result<(), Failure> {
        let seq = Seq(cp.tree_size.saturating_sub(1));
        let fail = |kind, detail: String| Failure::new(seq, kind, detail);
        if let Some(b) = cp.binding {
            match self.last_checkpoint {
                Some(last) if b.previous_tree_size > last => {
                    return Err(fail(
                        FailureKind::MissingCheckpoint,
                        format!(
                            "checkpoint of tree size {} follows the checkpoint of size {}, which is missing (the last one here is {last})",
                            cp.tree_size, b.previous_tree_size
                        ),
                    ));
                }
                Some(last) if b.previous_tree_size < last => {
                    return Err(fail(
                        FailureKind::CheckpointMismatch,
                        format!(
                            "checkpoint of tree size {} names {} as its predecessor, but a checkpoint of size {last} precedes it",
                            cp.tree_size, b.previous_tree_size
                        ),
                    ));
                }
                None if b.previous_tree_size > self.start.0 => {
                    return Err(fail(
                        FailureKind::MissingCheckpoint,
                        format!(
                            "checkpoint of tree size {} follows the checkpoint of size {}, which is missing",
                            cp.tree_size, b.previous_tree_size
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Verifies every signature gathered so far (the round in flight first, then the rest, in
    /// parallel batches); names the first bad one.
    fn flush_signatures(&mut self) -> Result<(), Failure> {
        self.join_round()?;
        let pending = std::mem::take(&mut self.pending);
        if let Some((seq, detail)) = first_bad_signature(&pending, self.batch) {
            return Err(Failure::new(seq, FailureKind::BadSignature, detail));
        }
        Ok(())
    }

    /// Ends the input: checks every pending signature and that every key used is anchored.
    ///
    /// # Errors
    /// The first failure.
    pub fn finish(mut self) -> Result<Proven, Failure> {
        self.flush_signatures()?;
        if let Some(seq) = self.unanchored_from {
            let id = self
                .key_uses
                .iter()
                .find(|u| u.trust == Trust::Unanchored)
                .map_or_else(String::new, |u| u.key_id.to_hex());
            return Err(Failure::new(
                seq,
                FailureKind::UnknownKey,
                format!(
                    "signed by key {id}, which is not trusted and hands over to no trusted key"
                ),
            ));
        }
        if let Some(cp) = &self.trusted.checkpoint
            && self.trusted.keys.get(&cp.key_id).is_none()
            && !self
                .key_uses
                .iter()
                .any(|u| u.key_id == cp.key_id && u.trust == Trust::Anchored)
        {
            return Err(Failure::new(
                Seq(cp.tree_size.saturating_sub(1)),
                FailureKind::BadCheckpointSignature,
                format!(
                    "the trusted checkpoint is signed by key {}, which neither is trusted nor hands over to a trusted key in this history",
                    cp.key_id
                ),
            ));
        }
        if let Some(cp) = &self.trusted.checkpoint
            && self.trusted_matched.is_none()
            && cp.tree_size > self.tree.size()
        {
            return Err(Failure::new(
                self.next_seq,
                FailureKind::Truncated,
                format!(
                    "the history ends at tree size {}, but the trusted checkpoint covers {} entries: the ledger was truncated or rolled back to an older copy",
                    self.tree.size(),
                    cp.tree_size
                ),
            ));
        }
        let covered_to = self
            .last_checkpoint
            .unwrap_or(self.start.0)
            .max(self.start.0);
        Ok(Proven {
            ledger_id: self.ledger_id,
            ledger_id_trusted: self.trusted.ledger_id.is_some(),
            start: self.start,
            entries: self.entries,
            range: (self.entries > 0).then(|| (self.start.0, self.next_seq.0 - 1)),
            checkpoints: self.checkpoints,
            last_checkpoint: self.last_checkpoint.filter(|&c| c > 0),
            uncovered_tail: self.next_seq.0.saturating_sub(covered_to),
            trusted_checkpoint_matched: self.trusted_matched,
            keys: self.key_uses,
        })
    }

    /// The key that signs the next position, if the history so far has named one.
    #[must_use]
    pub fn active_key(&self) -> Option<KeyId> {
        self.active.map(|(k, _)| k)
    }

    /// The Merkle tree size so far.
    #[must_use]
    pub fn tree_size(&self) -> u64 {
        self.tree.size()
    }
}

#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;
