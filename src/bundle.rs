//! Export bundles and their offline verification. Pure: no I/O; the caller feeds lines.
//!
//! A bundle is NDJSON: one JSON object per line, each with a `"kind"`, in this order:
//! - `header` (first): format, ledger identity, range, the ledger's size at export, the hash
//!   preceding the range and the Merkle right edge at its start;
//! - `key` lines: each public signing key with the seq range it signed, ordered by `first_seq`;
//! - `entry` lines, in seq order, each followed by the `checkpoint` it completes, if any;
//! - `footer` (last): counts, so that a cut-off file is noticed.
//!
//! Parsing is strict: each line must be exactly the text the exporter writes for the value it
//! holds (compact JSON, fields in their fixed order, no unknown or duplicate field, lowercase
//! hex, canonical timestamps), no blank line, nothing after the footer. Anything else is
//! refused as unusable input rather than interpreted.
//!
//! [`BundleVerifier`] checks the bundle's own claims (range, counts, key lines) and hands every
//! entry and checkpoint to [`crate::verify::Verifier`], which makes every trust decision.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Deserializer, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointJson};
use crate::crypto::{KeyId, PublicKey, SealedPayload, Signature};
use crate::entry::{
    Entry, EntryHash, EntryHeader, EventType, FORMAT_VERSION, FORMAT_VERSION_V1, LedgerId,
    PayloadDigest, Seq, StreamId, SubjectHandle,
};
use crate::merkle::MerkleHash;
use crate::record::Record;
use crate::timefmt::{format_micros, parse_canonical_micros};
use crate::verify::{
    Failure, FailureKind, KeyRange, Proven, Start, Trust, Trusted, TrustedKeys, Verifier,
};

/// The `format` of bundles this code writes and reads.
pub const BUNDLE_FORMAT: &str = "auditledger-bundle/v2";
/// The only signature algorithm.
pub const ALGORITHM: &str = "ed25519";

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
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// The ledger's identity, 32 hex digits.
    pub ledger_id: String,
    /// First seq in the bundle.
    pub from_seq: u64,
    /// Last seq in the bundle (inclusive), or null if it holds no entry.
    pub to_seq: Option<u64>,
    /// Entries in the ledger when the bundle was made (its head's seq + 1).
    pub ledger_size: u64,
    /// When it was made (RFC 3339, six fractional digits, `Z`).
    pub exported_at: String,
    /// `entry_hash` of entry `from_seq - 1` (zeros when `from_seq` is 0). Taken on trust for a
    /// partial bundle unless a kept checkpoint of size `from_seq` confirms it.
    pub prev_hash: String,
    /// RFC 6962 subtree hashes covering `[0, from_seq)`, largest subtree first (empty when 0).
    pub merkle_frontier: Vec<String>,
}

/// A public key line: a key and the seq range of the entries it signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLine {
    /// Key id.
    pub key_id: String,
    /// `ed25519`.
    pub algorithm: String,
    /// 32-byte public key, hex.
    pub public_key: String,
    /// First seq it signed (null: it has signed nothing).
    pub first_seq: Option<u64>,
    /// Last seq it signed (null: it is the current key).
    pub last_seq: Option<u64>,
}

impl KeyLine {
    /// The key line of a key and its range.
    #[must_use]
    pub fn new(key: &PublicKey, first_seq: Option<u64>, last_seq: Option<u64>) -> KeyLine {
        KeyLine {
            key_id: key.key_id().to_hex(),
            algorithm: ALGORITHM.to_owned(),
            public_key: hex::encode(key.to_bytes()),
            first_seq,
            last_seq,
        }
    }

    /// The public key, checked against `key_id`, and its range (`None` if it signed nothing).
    ///
    /// # Errors
    /// A field out of shape, or a key id that does not name the key.
    pub fn parse(&self) -> Result<(PublicKey, Option<KeyRange>), String> {
        let mut bytes = [0u8; 32];
        if self.algorithm != ALGORITHM {
            return Err(format!("algorithm {} is not {ALGORITHM}", self.algorithm));
        }
        if !crate::entry::decode_hex_exact(&self.public_key, &mut bytes) {
            return Err("public_key is not 64 lowercase hex digits".to_owned());
        }
        let key = PublicKey::from_bytes(&bytes).map_err(|e| format!("public_key: {e}"))?;
        if KeyId::from_hex(&self.key_id).ok() != Some(key.key_id()) {
            return Err(format!(
                "key_id {} is not the id of public_key ({})",
                self.key_id,
                key.key_id()
            ));
        }
        let range = match (self.first_seq, self.last_seq) {
            (Some(first), last) if last.is_none_or(|l| l >= first) => {
                Some(KeyRange { first, last })
            }
            (None, None) => None,
            _ => return Err("last_seq without first_seq, or below it".to_owned()),
        };
        Ok((key, range))
    }
}

/// Deserializes a metadata map, refusing duplicate keys (which a map would silently merge).
fn strict_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of strings without duplicate keys")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = a.next_entry::<String, String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// An entry line: the API's field names, the sealed payload instead of decrypted data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryLine {
    /// Encoding version: 2 (binds the header's ledger id), or 1 for a legacy entry.
    pub version: u8,
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
    /// RFC 3339 with six fractional digits and `Z`: the exact hashed microsecond value.
    pub recorded_at: String,
    /// Plaintext metadata.
    #[serde(deserialize_with = "strict_map")]
    pub metadata: BTreeMap<String, String>,
    /// The sealed payload, hex. Never absent in a ledger written by this service; a null here
    /// is reported as `missing_payload`.
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
#[serde(deny_unknown_fields)]
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
            version: h.version(),
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

    /// Parses the line back into a record of ledger `ledger_id`; a field out of shape is named.
    ///
    /// # Errors
    /// `malformed_record` at the line's seq.
    pub fn to_record(&self, ledger_id: LedgerId) -> Result<Record, Failure> {
        let seq = Seq(self.seq);
        let bad = |what: &str| {
            Failure::new(
                seq,
                FailureKind::MalformedRecord,
                format!("field {what} does not parse or is not written canonically"),
            )
        };
        let ledger_id = match self.version {
            FORMAT_VERSION => Some(ledger_id),
            FORMAT_VERSION_V1 => None,
            _ => return Err(bad("version")),
        };
        let header = EntryHeader {
            ledger_id,
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
            recorded_at_micros: parse_canonical_micros(&self.recorded_at)
                .ok_or_else(|| bad("recorded_at"))?,
            metadata: self.metadata.clone(),
        };
        let payload = match self.payload.as_deref() {
            None => None,
            Some(p) => {
                if p.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(bad("payload"));
                }
                // Into a buffer of the right size at once (`hex::decode` grows its vector as
                // it goes: a tenth of the offline verifier's time on ~600-byte payloads).
                let mut bytes = vec![0u8; p.len() / 2];
                if p.len() % 2 != 0 || hex::decode_to_slice(p, &mut bytes).is_err() {
                    return Err(bad("payload"));
                }
                Some(SealedPayload(bytes))
            }
        };
        Ok(Record {
            entry: Entry {
                header,
                payload_digest: PayloadDigest::from_hex(&self.payload_digest)
                    .map_err(|_| bad("payload_digest"))?,
                prev_hash: EntryHash::from_hex(&self.prev_hash).map_err(|_| bad("prev_hash"))?,
            },
            payload,
            entry_hash: EntryHash::from_hex(&self.entry_hash).map_err(|_| bad("entry_hash"))?,
            signature: Signature::from_hex(&self.signature).map_err(|_| bad("signature"))?,
            key_id: KeyId::from_hex(&self.key_id).map_err(|_| bad("key_id"))?,
        })
    }
}

/// Input the verifier cannot use at all (as opposed to evidence of tampering). Exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnusableInput {
    /// A line that is not a bundle line, or not written the one canonical way.
    #[error("line {line}: {why}")]
    BadLine {
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
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
    /// More than one key trusted without a range.
    #[error("ambiguous trusted keys: {0}")]
    AmbiguousKeys(String),
    /// The trusted checkpoint given cannot be used or cannot be related to this bundle.
    #[error("the trusted checkpoint cannot be used: {0}")]
    BadTrustedCheckpoint(String),
}

/// Why feeding stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Tampering found. Exit code 1.
    Tampered(Failure),
    /// The input cannot be verified. Exit code 2.
    Unusable(UnusableInput),
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Stop {
        Stop::Tampered(f)
    }
}

/// What a bundle that verified has proven, and what it could not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The verifier's account.
    pub proven: Proven,
    /// Whether the keys came from the bundle itself (no `--public-key`).
    pub keys_from_bundle: bool,
    /// The ledger's size at export, as the header claims it.
    pub ledger_size: u64,
    /// Keys whose line says a rotation retired them after the bundle's last entry, and at
    /// which seq: the bundle's claim, which nothing in it can confirm.
    pub retired_after: Vec<(String, u64)>,
}

impl Summary {
    /// What was proven, in sentences, for the person running the verifier.
    #[must_use]
    pub fn describe(&self) -> Vec<String> {
        let mut out = describe(
            &self.proven,
            Source::Bundle {
                keys_from_bundle: self.keys_from_bundle,
            },
            self.ledger_size,
        );
        for (key_id, at) in &self.retired_after {
            out.push(format!(
                "key {key_id}: the bundle says a rotation at seq {at}, after its last entry, retired it; not verified here"
            ));
        }
        out
    }
}

/// What was verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// An export bundle, offline.
    Bundle {
        /// Whether the keys came from the bundle itself.
        keys_from_bundle: bool,
    },
    /// The stored ledger (`auditledger verify`, `GET /v1/audit/verify`), against the keys
    /// directory, with the vault checked when the whole ledger was verified.
    Database,
}

/// Sentences saying what a verification proved and what it did not.
#[must_use]
pub fn describe(p: &Proven, source: Source, ledger_size: u64) -> Vec<String> {
    let keys_from_bundle = matches!(
        source,
        Source::Bundle {
            keys_from_bundle: true
        }
    );
    let mut out = Vec::new();
    let count = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let range = p
        .range
        .map_or("no entries".to_owned(), |(a, b)| format!("seq {a} to {b}"));
    let ledger = p.ledger_id.map_or_else(
        || "a legacy v1 ledger".to_owned(),
        |id| format!("ledger {id}"),
    );
    out.push(format!(
        "ok: {} verified ({range}) of {ledger}, with {}: hashes, links, signatures, key ranges and chain invariants",
        count(p.entries, "entry", "entries"),
        count(p.checkpoints, "checkpoint", "checkpoints"),
    ));
    if keys_from_bundle {
        out.push("keys: verified with the public keys inside the bundle, so a bundle re-signed with other keys would pass too; pass --public-key with a key obtained independently".to_owned());
    } else {
        for k in &p.keys {
            let how = match k.trust {
                Trust::Direct => "trusted (given)",
                Trust::Anchored => "trusted through a countersigned rotation",
                Trust::Unanchored => "NOT trusted",
            };
            let range = match (k.last_seq, k.retired_at) {
                (_, Some(r)) => format!("seq {} to {r}, then retired", k.first_seq),
                (Some(l), None) => format!("seq {} to {l}", k.first_seq),
                (None, None) => format!("from seq {}", k.first_seq),
            };
            out.push(format!("key {}: {how}; signed {range}", k.key_id));
        }
    }
    if !p.ledger_id_trusted && p.ledger_id.is_some() {
        out.push(
            "ledger identity: taken from the bundle (no trusted checkpoint names it)".to_owned(),
        );
    }
    if p.start.0 > 0 {
        if p.trusted_checkpoint_matched == Some(p.start.0) {
            out.push(format!(
                "start: the history before seq {} is the one the trusted checkpoint of size {} signs",
                p.start, p.start
            ));
        } else {
            out.push(format!(
                "start: partial range; the hash and Merkle edge before seq {} are taken on trust, and stream versions and erasures before it were not seen",
                p.start
            ));
        }
    }
    match (p.trusted_checkpoint_matched, source) {
        (Some(size), _) => out.push(format!(
            "tail: this history extends the trusted checkpoint of tree size {size}: nothing it covers was cut off or rewritten"
        )),
        (None, Source::Bundle { .. }) => out.push(
            "tail: no trusted checkpoint given, so a cut-off tail or an older copy of the ledger cannot be detected; keep a checkpoint (or use a witness) and pass it with --trusted-checkpoint".to_owned(),
        ),
        (None, Source::Database)
            if p.start.0 == 0 && p.range.is_none_or(|(_, last)| last + 1 >= ledger_size) =>
        {
            out.push(
                "tail: the newest stored checkpoint is within the ledger, but a tail cut together with the checkpoints covering it, or the whole database replaced by an older copy, is visible only against a checkpoint kept outside it (a witness, or verify-bundle --trusted-checkpoint)".to_owned(),
            );
        }
        (None, Source::Database) => out.push(
            "tail: a partial range: neither the tail nor the key vault was checked (verify the whole ledger for that)".to_owned(),
        ),
    }
    if p.uncovered_tail > 0 {
        out.push(format!(
            "coverage: the last {} covered by no checkpoint {}",
            count(p.uncovered_tail, "entry is", "entries are"),
            if matches!(source, Source::Database) {
                "stored"
            } else {
                "in the bundle"
            }
        ));
    }
    if let Some((_, last)) = p.range
        && ledger_size > last + 1
    {
        let size = ledger_size;
        out.push(format!(
            "range: the ledger held {size} entries (the header's claim); entries from seq {} on were not verified here",
            last + 1
        ));
    }
    out
}

enum Phase {
    Header,
    Keys,
    Body,
    Done,
}

/// Verifies a bundle fed line by line.
pub struct BundleVerifier {
    keys: TrustedKeys,
    keys_from_bundle: bool,
    trusted_checkpoint: Option<Checkpoint>,
    phase: Phase,
    header: Option<Header>,
    ledger_id: Option<LedgerId>,
    key_lines: Vec<KeyLine>,
    key_ids: HashSet<String>,
    verifier: Option<Verifier>,
    entries: u64,
    checkpoints: u64,
    last_seq: Option<u64>,
    line: u64,
    /// Reused buffers for reading entry lines.
    scratch: String,
    encoded: Vec<u8>,
}

impl std::fmt::Debug for BundleVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BundleVerifier(line {})", self.line)
    }
}

impl BundleVerifier {
    /// A verifier trusting `keys`; with an empty set it trusts the keys in the bundle (and the
    /// summary says so). `trusted` is a checkpoint the auditor kept from earlier.
    ///
    /// # Errors
    /// The trusted checkpoint does not parse.
    pub fn new(
        keys: TrustedKeys,
        trusted: Option<CheckpointJson>,
    ) -> Result<BundleVerifier, UnusableInput> {
        keys.check_unambiguous()
            .map_err(UnusableInput::AmbiguousKeys)?;
        let trusted_checkpoint = trusted
            .map(|t| {
                t.parse()
                    .map_err(|e| UnusableInput::BadTrustedCheckpoint(e.to_string()))
            })
            .transpose()?;
        Ok(BundleVerifier {
            keys_from_bundle: keys.is_empty(),
            keys,
            trusted_checkpoint,
            phase: Phase::Header,
            header: None,
            ledger_id: None,
            key_lines: Vec::new(),
            key_ids: HashSet::new(),
            verifier: None,
            entries: 0,
            checkpoints: 0,
            last_seq: None,
            line: 0,
            scratch: String::new(),
            encoded: Vec::new(),
        })
    }

    fn bad_line(&self, why: impl Into<String>) -> Stop {
        Stop::Unusable(UnusableInput::BadLine {
            line: self.line,
            why: why.into(),
        })
    }

    /// Feeds one line, without its terminating `\n`.
    ///
    /// # Errors
    /// Tampering found, or input that cannot be verified.
    pub fn feed(&mut self, text: &str) -> Result<(), Stop> {
        self.line += 1;
        if matches!(self.phase, Phase::Done) {
            return Err(self.bad_line("a line after the footer"));
        }
        if text.is_empty() {
            return Err(self.bad_line("a blank line"));
        }
        let line = self.parse_canonical(text)?;
        match (line, &self.phase) {
            (BundleLine::Header(h), Phase::Header) => self.on_header(h),
            (_, Phase::Header) => Err(Stop::Unusable(UnusableInput::NoHeader)),
            (BundleLine::Header(_), _) => Err(self.bad_line("a second header")),
            (BundleLine::Key(k), Phase::Keys) => self.on_key(k),
            (BundleLine::Key(_), _) => Err(self.bad_line("a key line after the entries began")),
            (BundleLine::Entry(e), _) => {
                self.begin_body()?;
                self.on_entry(&e)
            }
            (BundleLine::Checkpoint(c), _) => {
                self.begin_body()?;
                self.on_checkpoint(&c)
            }
            (BundleLine::Footer(f), _) => {
                self.begin_body()?;
                self.on_footer(&f)
            }
        }
    }

    /// Parses a line that must be exactly the exporter's text for the value it holds: one
    /// value, one spelling. This refuses whitespace, other field orders, escapes and number
    /// spellings, duplicate keys and decoy fields.
    fn parse_canonical(&mut self, text: &str) -> Result<BundleLine, Stop> {
        const ENTRY_PREFIX: &str = "{\"kind\":\"entry\",";
        // Entry lines are nearly all of a bundle: read them straight into their type (no
        // buffering of the tagged enum), and compare the re-encoding in reused buffers.
        if let Some(rest) = text.strip_prefix(ENTRY_PREFIX) {
            self.scratch.clear();
            self.scratch.push('{');
            self.scratch.push_str(rest);
            let entry: EntryLine = serde_json::from_str(&self.scratch)
                .map_err(|e| self.bad_line(format!("not a bundle line: {e}")))?;
            self.encoded.clear();
            serde_json::to_writer(&mut self.encoded, &entry)
                .map_err(|e| self.bad_line(format!("cannot re-encode: {e}")))?;
            if self.encoded != self.scratch.as_bytes() {
                return Err(self.not_canonical());
            }
            return Ok(BundleLine::Entry(entry));
        }
        let line: BundleLine = serde_json::from_str(text)
            .map_err(|e| self.bad_line(format!("not a bundle line: {e}")))?;
        let canonical = serde_json::to_string(&line)
            .map_err(|e| self.bad_line(format!("cannot re-encode: {e}")))?;
        if canonical != text {
            return Err(self.not_canonical());
        }
        Ok(line)
    }

    fn not_canonical(&self) -> Stop {
        self.bad_line(
            "not written canonically (compact JSON, fields in their fixed order, nothing extra)",
        )
    }

    fn on_header(&mut self, h: Header) -> Result<(), Stop> {
        if h.format != BUNDLE_FORMAT {
            return Err(Stop::Unusable(UnusableInput::NoHeader));
        }
        let ledger_id =
            LedgerId::from_hex(&h.ledger_id).map_err(|_| self.bad_line("header ledger_id"))?;
        parse_canonical_micros(&h.exported_at)
            .ok_or_else(|| self.bad_line("header exported_at"))?;
        let from = Seq(h.from_seq);
        let claims_hold = match h.to_seq {
            Some(t) => t >= h.from_seq && h.ledger_size > t,
            None => h.ledger_size >= h.from_seq,
        };
        if !claims_hold {
            return Err(Stop::Tampered(Failure::new(
                from,
                FailureKind::BundleMismatch,
                format!(
                    "the header's from_seq {}, to_seq {:?} and ledger_size {} contradict each other",
                    h.from_seq, h.to_seq, h.ledger_size
                ),
            )));
        }
        if let Some(cp) = &self.trusted_checkpoint {
            if let Some(id) = cp.ledger_id()
                && id != ledger_id
            {
                return Err(Stop::Tampered(Failure::new(
                    from,
                    FailureKind::LedgerMismatch,
                    format!(
                        "the bundle is of ledger {ledger_id}, the trusted checkpoint of ledger {id}"
                    ),
                )));
            }
            if cp.tree_size < h.from_seq {
                return Err(Stop::Unusable(UnusableInput::BadTrustedCheckpoint(
                    format!(
                        "it covers {} entries but the bundle starts at seq {}: export from seq {} or earlier to relate them",
                        cp.tree_size, h.from_seq, cp.tree_size
                    ),
                )));
            }
        }
        self.ledger_id = Some(ledger_id);
        self.header = Some(h);
        self.phase = Phase::Keys;
        Ok(())
    }

    fn on_key(&mut self, k: KeyLine) -> Result<(), Stop> {
        let (key, range) = k.parse().map_err(|why| {
            Stop::Tampered(Failure::new(
                Seq(k.first_seq.unwrap_or(0)),
                FailureKind::KeyLineMismatch,
                format!("key line {}: {why}", k.key_id),
            ))
        })?;
        if !self.key_ids.insert(k.key_id.clone()) {
            return Err(self.bad_line(format!("a second key line for key {}", k.key_id)));
        }
        if let Some(prev) = self.key_lines.last()
            && prev
                .first_seq
                .is_none_or(|p| k.first_seq.is_some_and(|f| f <= p))
        {
            return Err(self.bad_line("key lines are not in order of first_seq"));
        }
        if self.keys_from_bundle {
            if let Some(range) = range {
                self.keys.insert_ranged(key, range);
            }
        } else if let Some(t) = self.keys.get(&key.key_id())
            && t.key != key
        {
            return Err(Stop::Tampered(Failure::new(
                Seq(k.first_seq.unwrap_or(0)),
                FailureKind::KeyLineMismatch,
                format!(
                    "the key line for key {} carries another public key than the trusted one",
                    k.key_id
                ),
            )));
        }
        self.key_lines.push(k);
        Ok(())
    }

    fn begin_body(&mut self) -> Result<(), Stop> {
        if !matches!(self.phase, Phase::Keys) {
            return Ok(());
        }
        let Some(h) = &self.header else {
            return Err(Stop::Unusable(UnusableInput::NoHeader));
        };
        if self.keys.is_empty() {
            return Err(Stop::Unusable(UnusableInput::NoKeys));
        }
        let prev_hash =
            EntryHash::from_hex(&h.prev_hash).map_err(|_| self.bad_line("header prev_hash"))?;
        let frontier = h
            .merkle_frontier
            .iter()
            .map(|s| MerkleHash::from_hex(s))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.bad_line("header merkle_frontier"))?;
        let candidates = if self.keys_from_bundle {
            Vec::new()
        } else {
            self.key_lines
                .iter()
                .filter_map(|k| k.parse().ok().map(|(key, _)| key))
                .collect()
        };
        let trusted = Trusted {
            keys: self.keys.clone(),
            ledger_id: self
                .trusted_checkpoint
                .as_ref()
                .and_then(Checkpoint::ledger_id),
            checkpoint: self.trusted_checkpoint.clone(),
            candidates,
        };
        let mut verifier = Verifier::new(
            trusted,
            &Start {
                seq: Seq(h.from_seq),
                prev_hash,
                frontier,
            },
        )?;
        // Entries of a v2 bundle carry the header's identity: make it the one expected.
        if let Some(id) = self.ledger_id {
            verifier = verifier.expecting_ledger(id).map_err(Stop::Tampered)?;
        }
        self.verifier = Some(verifier);
        self.phase = Phase::Body;
        Ok(())
    }

    fn verifier(&mut self) -> Result<&mut Verifier, Stop> {
        self.verifier
            .as_mut()
            .ok_or(Stop::Unusable(UnusableInput::NoHeader))
    }

    fn on_entry(&mut self, line: &EntryLine) -> Result<(), Stop> {
        let ledger_id = self
            .ledger_id
            .ok_or(Stop::Unusable(UnusableInput::NoHeader))?;
        let record = line.to_record(ledger_id)?;
        self.verifier()?.push_record(&record)?;
        self.entries += 1;
        self.last_seq = Some(line.seq);
        Ok(())
    }

    fn on_checkpoint(&mut self, json: &CheckpointJson) -> Result<(), Stop> {
        let seq = Seq(json.tree_size.saturating_sub(1));
        let cp = json.parse().map_err(|e| {
            Stop::Tampered(Failure::new(
                seq,
                FailureKind::BadCheckpointSignature,
                format!("checkpoint at tree size {}: {e}", json.tree_size),
            ))
        })?;
        self.verifier()?.push_checkpoint(&cp)?;
        self.checkpoints += 1;
        Ok(())
    }

    fn on_footer(&mut self, f: &Footer) -> Result<(), Stop> {
        let next = self
            .verifier
            .as_ref()
            .map_or(Seq(0), crate::verify::Verifier::next_seq);
        if f.entries != self.entries || f.checkpoints != self.checkpoints {
            return Err(Stop::Tampered(Failure::new(
                next,
                FailureKind::BundleMismatch,
                format!(
                    "the footer counts {} entries and {} checkpoints, the bundle holds {} and {}",
                    f.entries, f.checkpoints, self.entries, self.checkpoints
                ),
            )));
        }
        let to_seq = self.header.as_ref().and_then(|h| h.to_seq);
        if to_seq != self.last_seq {
            return Err(Stop::Tampered(Failure::new(
                next,
                FailureKind::Truncated,
                format!(
                    "the header says the bundle ends at seq {}, but its last entry is {}",
                    to_seq.map_or("(none)".to_owned(), |t| t.to_string()),
                    self.last_seq.map_or("(none)".to_owned(), |t| t.to_string())
                ),
            )));
        }
        self.phase = Phase::Done;
        Ok(())
    }

    /// Ends the input; returns what was proven, or why the bundle does not verify.
    ///
    /// # Errors
    /// Tampering found, or input that cannot be verified.
    pub fn finish(self) -> Result<Summary, Stop> {
        if !matches!(self.phase, Phase::Done) {
            return Err(Stop::Unusable(match self.phase {
                Phase::Header => UnusableInput::NoHeader,
                _ => UnusableInput::NoFooter,
            }));
        }
        let (Some(verifier), Some(header)) = (self.verifier, self.header) else {
            return Err(Stop::Unusable(UnusableInput::NoHeader));
        };
        let end = verifier.tree_size();
        if let Some(cp) = &self.trusted_checkpoint
            && cp.tree_size > end
            && cp.tree_size <= header.ledger_size
        {
            return Err(Stop::Unusable(UnusableInput::BadTrustedCheckpoint(
                format!(
                    "it covers {} entries, and this bundle stops at {end} of the {} the ledger held: export a range that reaches it",
                    cp.tree_size, header.ledger_size
                ),
            )));
        }
        let proven = verifier.finish()?;
        let retired_after = check_key_lines(&self.key_lines, &proven, header.ledger_size)?;
        Ok(Summary {
            proven,
            keys_from_bundle: self.keys_from_bundle,
            ledger_size: header.ledger_size,
            retired_after,
        })
    }
}

/// Each key the history used has a key line whose range agrees with that use. Returns the
/// retirements key lines claim after the bundle's last entry.
///
/// A key the bundle does not see retired may still have been retired later, by a rotation
/// after the bundle's last entry: the exporter writes null then (FORMAT.md §12.4), but an older
/// one wrote that rotation's seq. Such a line is accepted only below the ledger's size the
/// header states, and only as a claim the summary states as unverified; a number anywhere else
/// claims a retirement the bundle would show.
fn check_key_lines(
    lines: &[KeyLine],
    proven: &Proven,
    ledger_size: u64,
) -> Result<Vec<(String, u64)>, Failure> {
    let mut retired_after = Vec::new();
    let bundle_end = proven.range.map(|(_, last)| last);
    for u in &proven.keys {
        let id = u.key_id.to_hex();
        let fail = |why: String| {
            Failure::new(
                Seq(u.first_seq),
                FailureKind::KeyLineMismatch,
                format!("key {id}: {why}"),
            )
        };
        let Some(line) = lines.iter().find(|l| l.key_id == id) else {
            return Err(fail(
                "it signed entries but the bundle has no key line for it".to_owned(),
            ));
        };
        let starts_here = u.first_seq > proven.start.0;
        match line.first_seq {
            Some(f) if (starts_here && f == u.first_seq) || (!starts_here && f <= u.first_seq) => {}
            other => {
                return Err(fail(format!(
                    "its key line says first_seq {other:?}, but the history has it signing from seq {}",
                    u.first_seq
                )));
            }
        }
        match (u.retired_at, line.last_seq) {
            (Some(r), Some(l)) if r == l => {}
            (None, None) => {}
            (None, Some(l)) if bundle_end.is_some_and(|end| end < l) && l < ledger_size => {
                retired_after.push((id.clone(), l));
            }
            (retired, last) => {
                return Err(fail(format!(
                    "its key line says last_seq {last:?}, but the history retires it at {retired:?}"
                )));
            }
        }
    }
    Ok(retired_after)
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;
