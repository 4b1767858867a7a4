//! Building and re-signing ledgers with the pure core alone: a small realistic bundle made
//! from fixed inputs (so it is byte-for-byte reproducible), and the tools of an attacker who
//! holds a signing key (re-hash, re-link and re-sign entries from some seq on, re-sign the
//! checkpoints that cover them). Shared by the bundle property test and the adversarial
//! corpus; included with `#[path]`, so every item need not be used by every test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::missing_panics_doc,
    clippy::too_many_lines,
    reason = "test code"
)]

use auditledger::bundle::{BUNDLE_FORMAT, BundleLine, EntryLine, Footer, Header, KeyLine};
use auditledger::checkpoint::{Checkpoint, CheckpointBinding, CheckpointJson, TreeHead};
use auditledger::crypto::{DataKey, KeyRef, LedgerSigningKey, seal_v1_with_nonce};
use auditledger::entry::{
    Entry, EntryHeader, EventType, GENESIS_PREV_HASH, LedgerId, Metadata, Seq, StreamId,
    SubjectHandle,
};
use auditledger::merkle::{CompactRange, leaf_hash};
use auditledger::record::Record;
use auditledger::timefmt::format_micros;

/// Seed of the signing key of the built ledger (as in FORMAT.md's examples).
pub const SEED: [u8; 32] = [0x44; 32];
/// 2026-11-22T09:45:18.123456Z, in µs: the first entry's time.
pub const BASE_MICROS: i64 = 1_795_340_718_123_456;
/// The built ledger's identity (format v2 binds it into every entry and checkpoint).
pub const LEDGER: LedgerId = LedgerId([0x1d; 16]);

/// A ledger held in memory: its records and the checkpoints made along it.
#[derive(Clone, Debug)]
pub struct Ledger {
    pub records: Vec<Record>,
    pub checkpoints: Vec<Checkpoint>,
}

/// Hashes and signs an entry.
pub fn sign_record(key: &LedgerSigningKey, entry: Entry, payload: Option<Vec<u8>>) -> Record {
    let entry_hash = entry.hash();
    Record {
        signature: key.sign_entry(&entry_hash),
        key_id: key.key_id(),
        entry,
        payload: payload.map(auditledger::crypto::SealedPayload),
        entry_hash,
    }
}

/// A (v2) checkpoint of ledger `ledger_id` over the first `size` records, chained to the
/// checkpoint of size `previous` (0 if none), signed by `key` at `timestamp`.
pub fn checkpoint_over(
    records: &[Record],
    size: u64,
    previous: u64,
    key: &LedgerSigningKey,
    timestamp: i64,
) -> Checkpoint {
    checkpoint_of(LEDGER, records, size, previous, key, timestamp)
}

/// [`checkpoint_over`] for any ledger identity.
pub fn checkpoint_of(
    ledger_id: LedgerId,
    records: &[Record],
    size: u64,
    previous: u64,
    key: &LedgerSigningKey,
    timestamp: i64,
) -> Checkpoint {
    let mut tree = CompactRange::new();
    for r in &records[..size as usize] {
        tree.append(leaf_hash(&r.entry_hash.0), |_, _| {});
    }
    Checkpoint::sign(
        key,
        CheckpointBinding {
            ledger_id,
            previous_tree_size: previous,
        },
        TreeHead {
            tree_size: size,
            root_hash: tree.root(),
            last_entry_hash: records[size as usize - 1].entry_hash,
            timestamp_micros: timestamp,
        },
    )
}

/// What an attacker holding `key` does after changing entry `from` (or anything after it):
/// re-links, re-hashes and re-signs every entry from `from` on, and re-signs (with their old
/// timestamps) the checkpoints that cover any of them, so that the result is validly signed.
/// Entry `from` keeps the `prev_hash` it has (the caller may have changed it); `records[0]`
/// must be seq 0.
pub fn resign_from(ledger: &mut Ledger, from: usize, key: &LedgerSigningKey) {
    for i in from..ledger.records.len() {
        if i > from {
            ledger.records[i].entry.prev_hash = ledger.records[i - 1].entry_hash;
        }
        let r = &mut ledger.records[i];
        r.entry_hash = r.entry.hash();
        r.signature = key.sign_entry(&r.entry_hash);
        r.key_id = key.key_id();
    }
    let records = ledger.records.clone();
    for cp in &mut ledger.checkpoints {
        if cp.tree_size as usize > from && cp.tree_size as usize <= records.len() {
            // The binding (ledger id, previous checkpoint) is kept as it was signed.
            let binding = cp.binding.unwrap_or(CheckpointBinding {
                ledger_id: LEDGER,
                previous_tree_size: 0,
            });
            *cp = checkpoint_of(
                binding.ledger_id,
                &records,
                cp.tree_size,
                binding.previous_tree_size,
                key,
                cp.timestamp_micros,
            );
        }
    }
}

struct Draft<'a> {
    stream: &'a str,
    event_type: &'a str,
    subject: Option<SubjectHandle>,
    data: String,
    system: bool,
}

/// Handle of the subject that stays live.
pub const ALICE: SubjectHandle = SubjectHandle([0xa1; 16]);
/// Handle of the subject that is erased at seq 6.
pub const BOB: SubjectHandle = SubjectHandle([0xb0; 16]);

/// A small realistic ledger from fixed inputs: 11 entries in three client streams, two
/// subjects, an erasure of one of them (seq 6) in `auditledger:subject-erasures`, and
/// checkpoints at sizes 4, 7 (the erasure's own) and 10, so the last entry is not covered.
pub fn small_ledger() -> Ledger {
    let key = LedgerSigningKey::from_seed(&SEED);
    let system_ref = KeyRef::System([0x22; 16]);
    let drafts = [
        Draft {
            stream: "acct-1",
            event_type: "AccountOpened",
            subject: Some(ALICE),
            data: r#"{"owner":"alice"}"#.into(),
            system: false,
        },
        Draft {
            stream: "acct-2",
            event_type: "AccountOpened",
            subject: Some(BOB),
            data: r#"{"owner":"bob"}"#.into(),
            system: false,
        },
        Draft {
            stream: "acct-1",
            event_type: "FundsDeposited",
            subject: Some(ALICE),
            data: r#"{"amount":100}"#.into(),
            system: false,
        },
        Draft {
            stream: "auth",
            event_type: "LoginSucceeded",
            subject: None,
            data: r#"{"ip":"10.0.0.1"}"#.into(),
            system: false,
        },
        Draft {
            stream: "acct-2",
            event_type: "FundsDeposited",
            subject: Some(BOB),
            data: r#"{"amount":7}"#.into(),
            system: false,
        },
        Draft {
            stream: "auth",
            event_type: "LoginFailed",
            subject: None,
            data: r#"{"ip":"10.0.0.2"}"#.into(),
            system: false,
        },
        Draft {
            stream: "auditledger:subject-erasures",
            event_type: "SubjectErased",
            subject: Some(BOB),
            data: format!(
                r#"{{"reason":"GDPR Art. 17","request_ref":"DSR-1","subject_handle":"{}"}}"#,
                BOB.to_hex()
            ),
            system: true,
        },
        Draft {
            stream: "acct-1",
            event_type: "FundsWithdrawn",
            subject: Some(ALICE),
            data: r#"{"amount":30}"#.into(),
            system: false,
        },
        Draft {
            stream: "auth",
            event_type: "LoginSucceeded",
            subject: None,
            data: r#"{"ip":"10.0.0.3"}"#.into(),
            system: false,
        },
        Draft {
            stream: "acct-3",
            event_type: "AccountOpened",
            subject: None,
            data: r#"{"owner":"corp"}"#.into(),
            system: false,
        },
        Draft {
            stream: "acct-1",
            event_type: "FundsDeposited",
            subject: Some(ALICE),
            data: r#"{"amount":5}"#.into(),
            system: false,
        },
    ];
    let mut versions = std::collections::BTreeMap::<&str, u64>::new();
    let mut records: Vec<Record> = Vec::new();
    let mut checkpoints = Vec::new();
    for (i, d) in drafts.iter().enumerate() {
        let version = versions.entry(d.stream).or_insert(0);
        let header = EntryHeader {
            ledger_id: Some(LEDGER),
            seq: Seq(i as u64),
            stream_id: StreamId::parse(d.stream).unwrap(),
            stream_version: *version,
            event_type: EventType::parse(d.event_type).unwrap(),
            schema_version: 1,
            subject: d.subject,
            recorded_at_micros: BASE_MICROS + 1_000 * i as i64,
            metadata: if d.system {
                Metadata::new()
            } else {
                Metadata::from([("source".to_owned(), "core-banking".to_owned())])
            },
        };
        *version += 1;
        let (data_key, key_ref) = match (d.subject, d.system) {
            // Each subject's key is its handle's first byte, repeated: fixed, so reproducible.
            (Some(h), false) => (
                DataKey::from_slice(&[h.0[0]; 32]).unwrap(),
                KeyRef::Subject(h),
            ),
            _ => (DataKey::from_slice(&[0x11; 32]).unwrap(), system_ref),
        };
        let mut nonce = [0x33; 12];
        nonce[11] = i as u8;
        let sealed = seal_v1_with_nonce(
            &data_key,
            &key_ref,
            &header.payload_aad(),
            d.data.as_bytes(),
            nonce,
        );
        let entry = Entry {
            header,
            payload_digest: sealed.digest(),
            prev_hash: records.last().map_or(GENESIS_PREV_HASH, |r| r.entry_hash),
        };
        records.push(sign_record(&key, entry, Some(sealed.0)));
        let size = records.len() as u64;
        if [4, 7, 10].contains(&size) {
            let previous = checkpoints.last().map_or(0, |c: &Checkpoint| c.tree_size);
            checkpoints.push(checkpoint_over(
                &records,
                size,
                previous,
                &key,
                BASE_MICROS + 1_000 * i as i64 + 500,
            ));
        }
    }
    Ledger {
        records,
        checkpoints,
    }
}

/// The ledger as an `auditledger-bundle/v2` export from seq 0, with one key line for `key`.
pub fn bundle_text(ledger: &Ledger, key: &LedgerSigningKey) -> String {
    partial_bundle_text(ledger, key, 0)
}

/// The ledger as an export from seq `from` on: the header carries the hash before `from` and
/// the Merkle right edge at size `from`, as `auditledger export --from-seq` writes them.
pub fn partial_bundle_text(ledger: &Ledger, key: &LedgerSigningKey, from: u64) -> String {
    let last = ledger.records.len().checked_sub(1).map(|n| n as u64);
    let mut edge = CompactRange::new();
    for r in &ledger.records[..from as usize] {
        edge.append(leaf_hash(&r.entry_hash.0), |_, _| {});
    }
    let kept = &ledger.records[from as usize..];
    let mut lines = vec![BundleLine::Header(Header {
        format: BUNDLE_FORMAT.to_owned(),
        ledger_id: ledger_id_of(ledger).to_hex(),
        from_seq: from,
        to_seq: last.filter(|_| !kept.is_empty()),
        ledger_size: ledger.records.len() as u64,
        exported_at: format_micros(BASE_MICROS + 60_000_000),
        prev_hash: from
            .checked_sub(1)
            .map_or(GENESIS_PREV_HASH, |p| ledger.records[p as usize].entry_hash)
            .to_hex(),
        merkle_frontier: edge.nodes().iter().map(|(_, h)| h.to_hex()).collect(),
    })];
    // The exporter writes the current key with last_seq null (FORMAT.md, key lines).
    lines.push(BundleLine::Key(KeyLine::new(
        &key.public_key(),
        kept.first().map(|_| from),
        None,
    )));
    let mut checkpoints = 0;
    for r in kept {
        lines.push(BundleLine::Entry(EntryLine::from_record(r)));
        let size = r.entry.header.seq.0 + 1;
        for cp in ledger.checkpoints.iter().filter(|c| c.tree_size == size) {
            lines.push(BundleLine::Checkpoint(cp.to_json()));
            checkpoints += 1;
        }
    }
    lines.push(BundleLine::Footer(Footer {
        entries: kept.len() as u64,
        checkpoints,
    }));
    lines
        .iter()
        .map(|l| serde_json::to_string(l).unwrap() + "\n")
        .collect()
}

/// The identity the ledger's entries carry ([`LEDGER`] for an empty one).
pub fn ledger_id_of(ledger: &Ledger) -> LedgerId {
    ledger
        .records
        .first()
        .and_then(|r| r.entry.header.ledger_id)
        .unwrap_or(LEDGER)
}

/// Reads the entries and checkpoints back out of a bundle (header, key and footer lines are
/// returned as they are, by position), so that an attacker can change and re-sign them.
pub struct ParsedBundle {
    /// Every line, as text; entry and checkpoint lines are replaced on [`ParsedBundle::text`].
    pub lines: Vec<String>,
    pub ledger: Ledger,
    /// Seq of the first entry (the header's `from_seq`).
    pub from_seq: u64,
}

impl ParsedBundle {
    pub fn parse(text: &str) -> ParsedBundle {
        let mut records = Vec::new();
        let mut checkpoints = Vec::new();
        let mut from_seq = 0;
        let mut ledger_id = LEDGER;
        for line in text.lines() {
            match serde_json::from_str::<BundleLine>(line) {
                Ok(BundleLine::Entry(e)) => records.push(e.to_record(ledger_id).unwrap()),
                Ok(BundleLine::Checkpoint(c)) => checkpoints.push(c.parse().unwrap()),
                Ok(BundleLine::Header(h)) => {
                    from_seq = h.from_seq;
                    ledger_id = LedgerId::from_hex(&h.ledger_id).unwrap();
                }
                _ => {}
            }
        }
        ParsedBundle {
            lines: text.lines().map(str::to_owned).collect(),
            ledger: Ledger {
                records,
                checkpoints,
            },
            from_seq,
        }
    }

    /// The bundle with its entry and checkpoint lines rewritten from `ledger` (same count and
    /// places as when parsed), every other line unchanged.
    pub fn text(&self) -> String {
        let mut entries = self.ledger.records.iter();
        let mut cps = self.ledger.checkpoints.iter();
        let mut out = String::new();
        for line in &self.lines {
            let kind = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["kind"].as_str().map(str::to_owned));
            let replaced = match kind.as_deref() {
                Some("entry") => serde_json::to_string(&BundleLine::Entry(EntryLine::from_record(
                    entries.next().unwrap(),
                )))
                .unwrap(),
                Some("checkpoint") => {
                    serde_json::to_string(&BundleLine::Checkpoint(cps.next().unwrap().to_json()))
                        .unwrap()
                }
                _ => line.clone(),
            };
            out.push_str(&replaced);
            out.push('\n');
        }
        out
    }
}

/// A checkpoint as the JSON `--trusted-checkpoint` reads.
pub fn checkpoint_json(cp: &Checkpoint) -> CheckpointJson {
    cp.to_json()
}
