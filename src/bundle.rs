//! Export bundles and their offline verification. Pure: no I/O; the caller feeds lines.
//!
//! A bundle is NDJSON: one JSON object per line, each with a `"kind"`:
//! - `header` (first): format, range, the hash preceding the range and the Merkle right edge
//!   at its start (both empty/zero for a bundle that starts at seq 0);
//! - `key`: a public signing key with the seq range it signed;
//! - `entry`: one entry, with the field names of an event read from the API, its sealed
//!   payload in hex (never decrypted);
//! - `checkpoint`: a signed tree head, placed right after the entry that completes it;
//! - `footer` (last): counts, so that a truncated file is noticed.
//!
//! [`BundleVerifier`] checks a bundle in constant memory: every entry's digest, hash, link and
//! key (sequentially), every signature (in batches, across cores, by ZIP-215), every checkpoint's
//! signature and root (recomputed from the entries), and — given a checkpoint the auditor kept
//! from earlier — that the bundle's history contains it, which is what catches a cut-off tail or
//! a database restored from an older copy.

use std::collections::{BTreeMap, VecDeque};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointJson};
use crate::crypto::{KeyId, PublicKey, SealedPayload, Signature, verify_entries_batch};
use crate::entry::{
    Entry, EntryHash, EntryHeader, EventType, GENESIS_PREV_HASH, PayloadDigest, Seq, StreamId,
    SubjectHandle,
};
use crate::merkle::{CompactRange, MerkleHash, leaf_hash};
use crate::record::Record;
use crate::timefmt::{format_micros, parse_rfc3339};
use crate::verify::{ChainVerifier, Failure, FailureKind, TrustedKeys};

/// The `format` of bundles this code writes and reads.
pub const BUNDLE_FORMAT: &str = "auditledger-bundle/v1";
/// Signatures verified per batch; batches run on all cores.
pub const SIGNATURE_BATCH: usize = 256;
/// Batches gathered before a parallel verification round.
const BATCHES_PER_ROUND: usize = 32;

/// One line of a bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BundleLine {
    /// First line.
    Header(Header),
    /// A public key.
    Key(KeyLine),
    /// An entry.
    Entry(EntryLine),
    /// A checkpoint.
    Checkpoint(CheckpointJson),
    /// Last line.
    Footer(Footer),
}

/// The first line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// First seq in the bundle.
    pub from_seq: u64,
    /// Last seq in the bundle (inclusive), or null if it holds no entry.
    pub to_seq: Option<u64>,
    /// When it was made (RFC 3339).
    pub exported_at: String,
    /// `entry_hash` of entry `from_seq - 1` (zeros when `from_seq` is 0). Taken on trust for a
    /// partial bundle.
    pub prev_hash: String,
    /// Hashes of the Merkle tree's right edge at size `from_seq` (empty when 0), left to right.
    /// Taken on trust for a partial bundle.
    pub merkle_frontier: Vec<String>,
}

/// A public key line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLine {
    /// Key id.
    pub key_id: String,
    /// `ed25519`.
    pub algorithm: String,
    /// 32-byte public key, hex.
    pub public_key: String,
    /// First seq signed.
    pub first_seq: Option<u64>,
    /// Last seq signed.
    pub last_seq: Option<u64>,
}

/// An entry line: the API's field names, the sealed payload instead of decrypted data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryLine {
    /// Global position.
    pub seq: u64,
    /// Stream.
    pub stream_id: String,
    /// Position in the stream.
    pub stream_version: u64,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Schema version.
    pub schema_version: u32,
    /// Subject handle (hex) or null.
    pub subject: Option<String>,
    /// RFC 3339 with six fractional digits: the exact hashed microsecond value.
    pub recorded_at: String,
    /// Plaintext metadata.
    pub metadata: BTreeMap<String, String>,
    /// The sealed payload, hex; null if purged.
    pub payload: Option<String>,
    /// SHA-256 of the sealed payload, hex.
    pub payload_digest: String,
    /// Entry hash, hex.
    pub entry_hash: String,
    /// Previous entry hash, hex.
    pub prev_hash: String,
    /// Signature, hex.
    pub signature: String,
    /// Signing key id.
    pub key_id: String,
}

/// The last line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footer {
    /// Entry lines in the bundle.
    pub entries: u64,
    /// Checkpoint lines in the bundle.
    pub checkpoints: u64,
}

impl EntryLine {
    /// The line for a stored record.
    #[must_use]
    pub fn from_record(r: &Record) -> EntryLine {
        let h = &r.entry.header;
        EntryLine {
            seq: h.seq.0,
            stream_id: h.stream_id.to_string(),
            stream_version: h.stream_version,
            event_type: h.event_type.to_string(),
            schema_version: h.schema_version,
            subject: h.subject.map(|s| s.to_hex()),
            recorded_at: format_micros(h.recorded_at_micros),
            metadata: h.metadata.clone(),
            payload: r.payload.as_ref().map(|p| hex::encode(&p.0)),
            payload_digest: r.entry.payload_digest.to_hex(),
            entry_hash: r.entry_hash.to_hex(),
            prev_hash: r.entry.prev_hash.to_hex(),
            signature: r.signature.to_hex(),
            key_id: r.key_id.to_hex(),
        }
    }

    /// Parses the line back into a record; a field out of shape is named.
    pub fn to_record(&self) -> Result<Record, Failure> {
        let seq = Seq(self.seq);
        let bad = |what: &str| Failure {
            seq,
            kind: FailureKind::MalformedRecord,
            detail: format!("field {what} does not parse"),
        };
        let header = EntryHeader {
            seq,
            stream_id: StreamId::parse(&self.stream_id).map_err(|_| bad("stream_id"))?,
            stream_version: self.stream_version,
            event_type: EventType::parse(&self.event_type).map_err(|_| bad("type"))?,
            schema_version: self.schema_version,
            subject: self
                .subject
                .as_deref()
                .map(SubjectHandle::from_hex)
                .transpose()
                .map_err(|_| bad("subject"))?,
            recorded_at_micros: parse_rfc3339(&self.recorded_at)
                .ok_or_else(|| bad("recorded_at"))?,
            metadata: self.metadata.clone(),
        };
        Ok(Record {
            entry: Entry {
                header,
                payload_digest: PayloadDigest::from_hex(&self.payload_digest)
                    .map_err(|_| bad("payload_digest"))?,
                prev_hash: EntryHash::from_hex(&self.prev_hash).map_err(|_| bad("prev_hash"))?,
            },
            payload: self
                .payload
                .as_deref()
                .map(|p| hex::decode(p).map(SealedPayload))
                .transpose()
                .map_err(|_| bad("payload"))?,
            entry_hash: EntryHash::from_hex(&self.entry_hash).map_err(|_| bad("entry_hash"))?,
            signature: Signature::from_hex(&self.signature).map_err(|_| bad("signature"))?,
            key_id: KeyId::from_hex(&self.key_id).map_err(|_| bad("key_id"))?,
        })
    }
}

/// Input the verifier cannot use at all (as opposed to evidence of tampering).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnusableInput {
    /// A line that is not a bundle line.
    #[error("line {line}: not a bundle line: {why}")]
    BadLine {
        /// 1-based line number.
        line: u64,
        /// The parser's message.
        why: String,
    },
    /// The first line is not a header of a known format.
    #[error("the bundle does not start with an {BUNDLE_FORMAT} header")]
    NoHeader,
    /// The file ends without a footer: cut off in transit or on disk.
    #[error("the bundle ends without a footer: it is incomplete")]
    NoFooter,
    /// No key to verify with.
    #[error("no public key to verify with")]
    NoKeys,
    /// The trusted checkpoint given does not verify under the trusted keys.
    #[error("the trusted checkpoint does not verify: {0}")]
    BadTrustedCheckpoint(String),
}

/// What a finished verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Entries checked.
    pub entries: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// First and last seq, if any entry.
    pub range: Option<(u64, u64)>,
    /// Whether the keys came from the bundle itself.
    pub keys_from_bundle: bool,
    /// Whether a trusted checkpoint was matched.
    pub trusted_checkpoint_matched: Option<u64>,
}

/// Verifies a bundle fed line by line.
pub struct BundleVerifier {
    keys: TrustedKeys,
    keys_from_bundle: bool,
    trusted: Option<Checkpoint>,
    header: Option<Header>,
    next_seq: Seq,
    prev_hash: EntryHash,
    tree: CompactRange,
    pending_signatures: Vec<(Seq, KeyId, EntryHash, Signature)>,
    pending_checkpoints: VecDeque<Checkpoint>,
    entries: u64,
    checkpoints: u64,
    footer: Option<Footer>,
    line: u64,
    trusted_matched: Option<u64>,
}

/// Why feeding stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Tampering found.
    Tampered(Failure),
    /// The input cannot be verified.
    Unusable(UnusableInput),
}

impl BundleVerifier {
    /// A verifier trusting `keys`; with an empty set it trusts the keys in the bundle (and the
    /// summary says so). `trusted` is a checkpoint the auditor kept from earlier.
    pub fn new(
        keys: TrustedKeys,
        trusted: Option<CheckpointJson>,
    ) -> Result<BundleVerifier, UnusableInput> {
        let trusted = trusted
            .map(|t| {
                t.parse()
                    .map_err(|e| UnusableInput::BadTrustedCheckpoint(e.to_string()))
            })
            .transpose()?;
        Ok(BundleVerifier {
            keys_from_bundle: keys.is_empty(),
            keys,
            trusted,
            header: None,
            next_seq: Seq(0),
            prev_hash: GENESIS_PREV_HASH,
            tree: CompactRange::new(),
            pending_signatures: Vec::new(),
            pending_checkpoints: VecDeque::new(),
            entries: 0,
            checkpoints: 0,
            footer: None,
            line: 0,
            trusted_matched: None,
        })
    }

    fn check_trusted_signature(&self) -> Result<(), Stop> {
        if let Some(t) = &self.trusted {
            let key = self.keys.find(&t.key_id).ok_or_else(|| {
                Stop::Unusable(UnusableInput::BadTrustedCheckpoint(format!(
                    "signed by key {}, which is not trusted",
                    t.key_id
                )))
            })?;
            t.verify(key)
                .map_err(|e| Stop::Unusable(UnusableInput::BadTrustedCheckpoint(e.to_string())))?;
        }
        Ok(())
    }

    /// Feeds one line (without its newline).
    pub fn feed(&mut self, text: &str) -> Result<(), Stop> {
        self.line += 1;
        if text.trim().is_empty() {
            return Ok(());
        }
        let line: BundleLine = serde_json::from_str(text).map_err(|e| {
            Stop::Unusable(UnusableInput::BadLine {
                line: self.line,
                why: e.to_string(),
            })
        })?;
        let result = match line {
            BundleLine::Header(h) => self.on_header(h),
            _ if self.header.is_none() => Err(Stop::Unusable(UnusableInput::NoHeader)),
            BundleLine::Key(k) => self.on_key(&k),
            BundleLine::Entry(e) => self.on_entry(&e),
            BundleLine::Checkpoint(c) => self.on_checkpoint(&c),
            BundleLine::Footer(f) => {
                self.footer = Some(f);
                Ok(())
            }
        };
        if let Err(Stop::Tampered(found)) = result {
            // Signatures still pending belong to earlier entries: a bad one among them is the
            // first failure.
            self.flush_signatures()?;
            return Err(Stop::Tampered(found));
        }
        result
    }

    fn bad_line(&self, why: &str) -> Stop {
        Stop::Unusable(UnusableInput::BadLine {
            line: self.line,
            why: why.to_owned(),
        })
    }

    fn on_header(&mut self, h: Header) -> Result<(), Stop> {
        if self.header.is_some() || h.format != BUNDLE_FORMAT {
            return Err(Stop::Unusable(UnusableInput::NoHeader));
        }
        let prev_hash =
            EntryHash::from_hex(&h.prev_hash).map_err(|_| self.bad_line("header prev_hash"))?;
        let frontier = h
            .merkle_frontier
            .iter()
            .map(|s| MerkleHash::from_hex(s))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.bad_line("header merkle_frontier"))?;
        self.start_at(Seq(h.from_seq), prev_hash, &frontier)
            .map_err(|_| self.bad_line("header merkle_frontier does not fit from_seq"))?;
        self.header = Some(h);
        Ok(())
    }

    /// Sets where the records to come start: their first seq, the hash before it, and the
    /// Merkle right edge at that size (all empty for seq 0).
    pub fn start_at(
        &mut self,
        from: Seq,
        prev_hash: EntryHash,
        frontier: &[MerkleHash],
    ) -> Result<(), crate::merkle::ProofError> {
        self.next_seq = from;
        self.prev_hash = prev_hash;
        self.tree = CompactRange::from_hashes(from.0, frontier)?;
        Ok(())
    }

    fn on_key(&mut self, k: &KeyLine) -> Result<(), Stop> {
        if self.keys_from_bundle {
            let bytes = hex::decode(&k.public_key).map_err(|_| self.bad_line("public_key"))?;
            let key = PublicKey::from_bytes(&bytes).map_err(|_| self.bad_line("public_key"))?;
            if key.key_id().to_hex() != k.key_id {
                return Err(self.bad_line("key_id does not match public_key"));
            }
            self.keys.insert(key);
        }
        Ok(())
    }

    fn on_entry(&mut self, line: &EntryLine) -> Result<(), Stop> {
        let record = line.to_record().map_err(Stop::Tampered)?;
        self.push_record(&record)
    }

    /// Checks the next record (signature deferred to a batch).
    pub fn push_record(&mut self, record: &Record) -> Result<(), Stop> {
        if self.entries == 0 {
            if self.keys.is_empty() {
                return Err(Stop::Unusable(UnusableInput::NoKeys));
            }
            self.check_trusted_signature()?;
        }
        let mut chain = ChainVerifier::resume(&self.keys, self.next_seq, self.prev_hash);
        if let Err(found) = chain.check_structure(record) {
            self.flush_signatures()?;
            return Err(Stop::Tampered(found));
        }
        self.next_seq = chain.next_seq();
        self.prev_hash = record.entry_hash;
        self.pending_signatures.push((
            record.entry.header.seq,
            record.key_id,
            record.entry_hash,
            record.signature,
        ));
        if self.pending_signatures.len() >= SIGNATURE_BATCH * BATCHES_PER_ROUND {
            self.flush_signatures()?;
        }
        self.tree.append(leaf_hash(&record.entry_hash.0), |_, _| {});
        self.entries += 1;
        self.check_reached_checkpoints(record.entry_hash)
    }

    fn on_checkpoint(&mut self, json: &CheckpointJson) -> Result<(), Stop> {
        let seq = Seq(json.tree_size.saturating_sub(1));
        let cp = json.parse().map_err(|e| {
            Stop::Tampered(Failure {
                seq,
                kind: FailureKind::BadCheckpointSignature,
                detail: format!("checkpoint at tree size {}: {e}", json.tree_size),
            })
        })?;
        self.push_checkpoint(cp)
    }

    /// Checks a checkpoint: its signature now, its root when the entries reach its size.
    pub fn push_checkpoint(&mut self, cp: Checkpoint) -> Result<(), Stop> {
        let seq = Seq(cp.tree_size.saturating_sub(1));
        let key = self.keys.find(&cp.key_id).ok_or_else(|| {
            Stop::Tampered(Failure {
                seq,
                kind: FailureKind::BadCheckpointSignature,
                detail: format!(
                    "checkpoint at tree size {} signed by untrusted key {}",
                    cp.tree_size, cp.key_id
                ),
            })
        })?;
        cp.verify(key).map_err(|e| {
            Stop::Tampered(Failure {
                seq,
                kind: FailureKind::BadCheckpointSignature,
                detail: format!("checkpoint at tree size {}: {e}", cp.tree_size),
            })
        })?;
        self.checkpoints += 1;
        if cp.tree_size < self.tree.size() {
            return Err(Stop::Tampered(Failure {
                seq,
                kind: FailureKind::CheckpointMismatch,
                detail: format!(
                    "checkpoint at tree size {} comes after entry {}: out of place",
                    cp.tree_size,
                    self.tree.size()
                ),
            }));
        }
        self.pending_checkpoints.push_back(cp);
        self.check_reached_checkpoints(self.prev_hash)
    }

    fn check_reached_checkpoints(&mut self, last: EntryHash) -> Result<(), Stop> {
        let size = self.tree.size();
        while let Some(cp) = self.pending_checkpoints.front() {
            if cp.tree_size != size {
                break;
            }
            if cp.root_hash != self.tree.root() || cp.last_entry_hash != last {
                return Err(Stop::Tampered(Failure {
                    seq: Seq(size.saturating_sub(1)),
                    kind: FailureKind::CheckpointMismatch,
                    detail: format!(
                        "the entries hash to root {}, but the checkpoint at tree size {size} signs {}",
                        self.tree.root().to_hex(),
                        cp.root_hash.to_hex()
                    ),
                }));
            }
            self.pending_checkpoints.pop_front();
        }
        if let Some(t) = &self.trusted
            && t.tree_size == size
        {
            if t.root_hash != self.tree.root() {
                return Err(Stop::Tampered(Failure {
                    seq: Seq(size.saturating_sub(1)),
                    kind: FailureKind::CheckpointMismatch,
                    detail: format!(
                        "the first {size} entries hash to root {}, but the trusted checkpoint signs {}: history was rewritten",
                        self.tree.root().to_hex(),
                        t.root_hash.to_hex()
                    ),
                }));
            }
            self.trusted_matched = Some(size);
        }
        Ok(())
    }

    /// Verifies the signatures gathered so far, in parallel batches; names the first bad one.
    fn flush_signatures(&mut self) -> Result<(), Stop> {
        let pending = std::mem::take(&mut self.pending_signatures);
        let keys = &self.keys;
        let first_bad = pending
            .par_chunks(SIGNATURE_BATCH)
            .filter_map(|chunk| {
                let items: Option<Vec<_>> = chunk
                    .iter()
                    .map(|(_, id, h, s)| keys.find(id).map(|k| (k, h, s)))
                    .collect();
                if items.as_deref().is_some_and(verify_entries_batch) {
                    return None;
                }
                // Which one? Check singly, by the same rule.
                chunk.iter().find_map(|(seq, id, h, s)| {
                    let ok = keys.find(id).is_some_and(|k| k.verify_entry(h, s).is_ok());
                    (!ok).then_some((*seq, *id))
                })
            })
            .min_by_key(|(seq, _)| *seq);
        if let Some((seq, id)) = first_bad {
            return Err(Stop::Tampered(Failure {
                seq,
                kind: FailureKind::BadSignature,
                detail: format!("the signature does not verify under key {id}"),
            }));
        }
        Ok(())
    }

    /// Entries checked so far (signatures possibly still pending).
    #[must_use]
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Ends a stream of records fed directly (no bundle lines, so no footer to check).
    pub fn finish_records(mut self) -> Result<Summary, Stop> {
        self.footer = Some(Footer {
            entries: self.entries,
            checkpoints: self.checkpoints,
        });
        self.finish()
    }

    /// Ends the input; returns the summary or why the bundle does not verify.
    pub fn finish(mut self) -> Result<Summary, Stop> {
        self.flush_signatures()?;
        let Some(footer) = &self.footer else {
            return Err(Stop::Unusable(UnusableInput::NoFooter));
        };
        if footer.entries != self.entries || footer.checkpoints != self.checkpoints {
            return Err(Stop::Tampered(Failure {
                seq: self.next_seq,
                kind: FailureKind::Truncated,
                detail: format!(
                    "the footer counts {} entries and {} checkpoints, the bundle holds {} and {}",
                    footer.entries, footer.checkpoints, self.entries, self.checkpoints
                ),
            }));
        }
        if let Some(cp) = self.pending_checkpoints.front() {
            return Err(Stop::Tampered(Failure {
                seq: self.next_seq,
                kind: FailureKind::Truncated,
                detail: format!(
                    "a signed checkpoint covers {} entries, but the bundle ends at {}",
                    cp.tree_size,
                    self.tree.size()
                ),
            }));
        }
        if self.entries == 0 {
            self.check_trusted_signature()?;
        }
        if let Some(t) = &self.trusted
            && self.trusted_matched.is_none()
        {
            let starts_after = self
                .header
                .as_ref()
                .is_some_and(|h| h.from_seq > t.tree_size);
            let detail = if starts_after {
                format!(
                    "the bundle starts at seq {} but the trusted checkpoint covers {} entries: export from seq 0 to check it",
                    self.header.as_ref().map_or(0, |h| h.from_seq),
                    t.tree_size
                )
            } else {
                format!(
                    "the bundle ends at tree size {}, but the trusted checkpoint covers {} entries: the ledger was truncated or rolled back to an older copy",
                    self.tree.size(),
                    t.tree_size
                )
            };
            return Err(Stop::Tampered(Failure {
                seq: self.next_seq,
                kind: FailureKind::Truncated,
                detail,
            }));
        }
        let range =
            (self.entries > 0).then(|| (self.next_seq.0 - self.entries, self.next_seq.0 - 1));
        Ok(Summary {
            entries: self.entries,
            checkpoints: self.checkpoints,
            range,
            keys_from_bundle: self.keys_from_bundle,
            trusted_checkpoint_matched: self.trusted_matched,
        })
    }
}
