//! A ledger written in memory, entry by entry, with real sealing and signing: for tests of the
//! verifiers.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use super::invariants;
use crate::crypto::{DataKey, KeyRef, LedgerSigningKey, seal};
use crate::entry::{
    Entry, EntryHash, EntryHeader, EventType, GENESIS_PREV_HASH, LedgerId, Metadata, Seq, StreamId,
    SubjectHandle,
};
use crate::record::Record;
use crate::rotation::{KEYS_STREAM, Rotation, RotationPoint, SIGNING_KEY_ROTATED};

pub const LEDGER: LedgerId = LedgerId([0x1e; 16]);

/// A ledger being written, entry by entry, with real sealing and signing.
pub struct Builder {
    pub key: LedgerSigningKey,
    dek: DataKey,
    pub records: Vec<Record>,
    versions: BTreeMap<String, u64>,
}

impl Builder {
    pub fn new(key: LedgerSigningKey) -> Builder {
        Builder {
            key,
            dek: DataKey::generate(),
            records: Vec::new(),
            versions: BTreeMap::new(),
        }
    }

    pub fn prev(&self) -> EntryHash {
        self.records
            .last()
            .map_or(GENESIS_PREV_HASH, |r| r.entry_hash)
    }

    pub fn header(
        &mut self,
        stream: &str,
        ty: &str,
        subject: Option<SubjectHandle>,
    ) -> EntryHeader {
        let v = self.versions.get(stream).map_or(0, |v| v + 1);
        self.versions.insert(stream.to_owned(), v);
        EntryHeader {
            ledger_id: Some(LEDGER),
            seq: Seq(self.records.len() as u64),
            stream_id: StreamId::parse(stream).unwrap(),
            stream_version: v,
            event_type: EventType::parse(ty).unwrap(),
            schema_version: 1,
            subject,
            recorded_at_micros: 1_000 + i64::try_from(self.records.len()).unwrap(),
            metadata: Metadata::new(),
        }
    }

    pub fn push_header(&mut self, header: EntryHeader, key_ref: KeyRef) {
        let payload = seal(&self.dek, &key_ref, &header.payload_aad(), b"{}");
        let entry = Entry {
            header,
            payload_digest: payload.digest(),
            prev_hash: self.prev(),
        };
        let entry_hash = entry.hash();
        self.records.push(Record {
            entry,
            payload: Some(payload),
            entry_hash,
            signature: self.key.sign_entry(&entry_hash),
            key_id: self.key.key_id(),
        });
    }

    pub fn event(&mut self, stream: &str, subject: Option<SubjectHandle>) {
        let h = self.header(stream, "T", subject);
        let key_ref = subject.map_or(KeyRef::System([0; 16]), KeyRef::Subject);
        self.push_header(h, key_ref);
    }

    pub fn erase(&mut self, subject: SubjectHandle) {
        let h = self.header(
            invariants::ERASURE_STREAM,
            invariants::SUBJECT_ERASED,
            Some(subject),
        );
        self.push_header(h, KeyRef::System([0; 16]));
    }

    pub fn rotate(&mut self, new: LedgerSigningKey) {
        let mut h = self.header(KEYS_STREAM, SIGNING_KEY_ROTATED, None);
        let point = RotationPoint {
            ledger_id: LEDGER,
            seq: h.seq,
            prev_hash: self.prev(),
            old_key: self.key.public_key(),
        };
        h.metadata = Rotation::countersign(&new, &point).to_metadata();
        self.push_header(h, KeyRef::System([0; 16]));
        self.key = new;
    }
}

impl Builder {
    /// The ledger as bundle lines (header, key line, entries with a checkpoint after every
    /// `every` entries, footer), exactly as the exporter writes them.
    pub fn bundle(&self, every: u64) -> Vec<String> {
        use crate::bundle::{BUNDLE_FORMAT, BundleLine, EntryLine, Footer, Header, KeyLine};
        use crate::checkpoint::{Checkpoint, CheckpointBinding, TreeHead};
        use crate::merkle::{CompactRange, leaf_hash};
        let n = self.records.len() as u64;
        let mut lines = vec![BundleLine::Header(Header {
            format: BUNDLE_FORMAT.to_owned(),
            ledger_id: LEDGER.to_hex(),
            from_seq: 0,
            to_seq: n.checked_sub(1),
            ledger_size: n,
            exported_at: crate::timefmt::format_micros(5_000),
            prev_hash: GENESIS_PREV_HASH.to_hex(),
            merkle_frontier: Vec::new(),
        })];
        lines.push(BundleLine::Key(KeyLine::new(
            &self.key.public_key(),
            Some(0),
            None,
        )));
        let mut tree = CompactRange::new();
        let mut previous = 0;
        let mut checkpoints = 0;
        for r in &self.records {
            lines.push(BundleLine::Entry(EntryLine::from_record(r)));
            tree.append(leaf_hash(&r.entry_hash.0), |_, _| {});
            if tree.size().is_multiple_of(every) {
                let cp = Checkpoint::sign(
                    &self.key,
                    CheckpointBinding {
                        ledger_id: LEDGER,
                        previous_tree_size: previous,
                    },
                    TreeHead {
                        tree_size: tree.size(),
                        root_hash: tree.root(),
                        last_entry_hash: r.entry_hash,
                        timestamp_micros: 4_000,
                    },
                );
                previous = tree.size();
                checkpoints += 1;
                lines.push(BundleLine::Checkpoint(cp.to_json()));
            }
        }
        lines.push(BundleLine::Footer(Footer {
            entries: n,
            checkpoints,
        }));
        lines
            .iter()
            .map(|l| serde_json::to_string(l).unwrap())
            .collect()
    }
}
