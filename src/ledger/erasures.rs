//! Erasures after the fact: each one's receipt, rebuilt from its `SubjectErased` entry and the
//! erasure record (the stored signature), whatever the tombstone setting; and its progress
//! towards being forgotten in every copy of the database.

use serde::Serialize;

use super::erasure::receipt_json;
use super::{ERASURE_STREAM, Ledger, ReadError};
use crate::crypto::Signature;
use crate::entry::Seq;
use crate::receipt::{ReceiptFacts, ReceiptJson};
use crate::store::{EpochRow, ErasureRow};
use crate::timefmt::format_micros;

/// Most erasures listed for one request reference.
pub const MAX_ERASURES_PER_REF: u32 = 100;

/// How far an erasure has got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErasureState {
    /// The key and link are gone from the live tables; old copies may remain in the live files.
    KeyDeleted,
    /// The live files are clean too (SQLite WAL truncated, PostgreSQL VACUUM done past it);
    /// copies outside them (backups, replicas, recycled WAL) still wait for the epoch's end.
    LiveCleaned,
    /// Every epoch that ever wrapped the subject's key or link is destroyed: forgotten in
    /// every copy.
    Forgotten,
}

/// The status of one erasure.
#[derive(Clone, Debug, Serialize)]
pub struct ErasureStatus {
    /// Where it stands.
    pub state: ErasureState,
    /// When the key and link were deleted (the erasure's commit), RFC 3339.
    pub key_deleted_at: String,
    /// When the live files were cleaned past it.
    pub live_cleaned_at: Option<String>,
    /// When the last epoch that wrapped its key or link was destroyed.
    pub forgotten_at: Option<String>,
    /// When that is promised (null for an erasure made before KEK epochs).
    pub forgotten_by: Option<String>,
    /// The epoch current at the erasure.
    pub epoch: Option<u32>,
}

/// An erasure's receipt and status.
#[derive(Clone, Debug, Serialize)]
pub struct ErasureView {
    /// The receipt, as first returned (null for an erasure made before receipts were kept).
    pub receipt: Option<ReceiptJson>,
    /// Its progress.
    pub status: ErasureStatus,
}

/// The status of an erasure given the epochs: pure, so the rule is in one place.
#[must_use]
pub fn status(row: &ErasureRow, epochs: &[EpochRow]) -> ErasureStatus {
    let epoch = row.record.as_ref().map(|r| r.epoch);
    // Forgotten once every epoch up to the erasure's is destroyed (its key and link may have
    // been wrapped under any of them, and copies of each may survive somewhere).
    let forgotten_at = epoch.and_then(|e| {
        let upto: Vec<_> = epochs.iter().filter(|x| x.epoch <= e).collect();
        if upto.iter().all(|x| x.destroyed_at.is_some()) {
            upto.iter().filter_map(|x| x.destroyed_at).max()
        } else {
            None
        }
    });
    let state = if forgotten_at.is_some() {
        ErasureState::Forgotten
    } else if row.cleaned_at.is_some() {
        ErasureState::LiveCleaned
    } else {
        ErasureState::KeyDeleted
    };
    ErasureStatus {
        state,
        key_deleted_at: format_micros(row.erased_at),
        live_cleaned_at: row.cleaned_at.map(format_micros),
        forgotten_at: forgotten_at.map(format_micros),
        forgotten_by: row.record.as_ref().map(|r| format_micros(r.forgotten_by)),
        epoch,
    }
}

impl Ledger {
    /// The erasure whose `SubjectErased` entry is at `seq`, if that is one.
    pub async fn erasure(&self, seq: Seq) -> Result<Option<ErasureView>, ReadError> {
        let Some(row) = self.store.erasure(seq).await? else {
            return Ok(None);
        };
        let epochs = self.store.kek_epochs().await?;
        self.view(row, &epochs).await.map(Some)
    }

    /// The erasures recorded under a request reference, oldest first.
    pub async fn erasures_by_ref(&self, request_ref: &str) -> Result<Vec<ErasureView>, ReadError> {
        let rows = self
            .store
            .erasures_by_ref(request_ref, MAX_ERASURES_PER_REF)
            .await?;
        let epochs = self.store.kek_epochs().await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.view(row, &epochs).await?);
        }
        Ok(out)
    }

    async fn view(&self, row: ErasureRow, epochs: &[EpochRow]) -> Result<ErasureView, ReadError> {
        let status = status(&row, epochs);
        let seq = row.erasure_seq;
        let Some(record) = row.record else {
            return Ok(ErasureView {
                receipt: None,
                status,
            });
        };
        let entry = self
            .store
            .read_global(seq, Some(seq), 1)
            .await?
            .into_iter()
            .next()
            .ok_or(ReadError::MissingData {
                seq,
                what: "erasure entry",
            })?
            .into_record()?;
        if entry.entry.header.stream_id.as_str() != ERASURE_STREAM {
            return Err(ReadError::MissingData {
                seq,
                what: "erasure entry",
            });
        }
        let facts = ReceiptFacts {
            ledger_id: self.id,
            subject_handle: row.handle,
            erased_at_micros: row.erased_at,
            erasure_seq: seq,
            erasure_entry_hash: entry.entry_hash,
            request_ref: record.request_ref.clone(),
            epoch: record.epoch,
            forgotten_by_micros: record.forgotten_by,
        };
        let signature = Signature::from_slice(&record.receipt_signature)
            .map_err(|_| ReadError::MissingData {
                seq,
                what: "receipt signature",
            })?
            .to_hex();
        // The checkpoint the erasure made, whose last leaf is the erasure entry.
        let checkpoint = self
            .store
            .checkpoints(seq.0 + 1, seq.0 + 1, 1)
            .await?
            .into_iter()
            .next()
            .map(|c| c.to_json());
        let proof = self
            .inclusion_proof(seq, Some(seq.0 + 1))
            .await
            .map(|p| {
                p.proof
                    .iter()
                    .map(crate::merkle::MerkleHash::to_hex)
                    .collect()
            })
            .unwrap_or_default();
        Ok(ErasureView {
            receipt: Some(receipt_json(
                &facts,
                &record.receipt_key_id,
                &signature,
                checkpoint,
                proof,
            )),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::SubjectHandle;
    use crate::store::ErasureRecord;

    fn epoch(n: u32, destroyed_at: Option<i64>) -> EpochRow {
        EpochRow {
            epoch: n,
            kek_id: format!("{n:016x}"),
            started_at: 0,
            rotate_by: 100,
            destroyed_at,
        }
    }

    fn erasure(epoch: Option<u32>, cleaned_at: Option<i64>) -> ErasureRow {
        ErasureRow {
            handle: SubjectHandle([1; 16]),
            erasure_seq: Seq(7),
            erased_at: 50,
            record: epoch.map(|epoch| ErasureRecord {
                request_ref: "DSR-1".to_owned(),
                epoch,
                forgotten_by: 3_600_000_100,
                receipt_key_id: "00".to_owned(),
                receipt_signature: vec![0; 64],
            }),
            cleaned_at,
        }
    }

    #[test]
    fn forgotten_only_once_every_epoch_up_to_the_erasures_is_destroyed() {
        let row = erasure(Some(2), None);
        let s = status(&row, &[epoch(1, Some(10)), epoch(2, None)]);
        assert_eq!(s.state, ErasureState::KeyDeleted);
        let row = erasure(Some(2), Some(60));
        let s = status(&row, &[epoch(1, Some(10)), epoch(2, None), epoch(3, None)]);
        assert_eq!(s.state, ErasureState::LiveCleaned);
        assert!(s.forgotten_at.is_none());
        // Epoch 2 destroyed but epoch 1 (which may also have wrapped the key) still lives.
        let s = status(&row, &[epoch(1, None), epoch(2, Some(90)), epoch(3, None)]);
        assert_eq!(s.state, ErasureState::LiveCleaned);
        let s = status(
            &row,
            &[epoch(1, Some(10)), epoch(2, Some(90)), epoch(3, None)],
        );
        assert_eq!(s.state, ErasureState::Forgotten);
        assert_eq!(s.forgotten_at, Some(format_micros(90)));
        // An erasure from before epochs has no promise, and is never claimed forgotten.
        let s = status(&erasure(None, Some(60)), &[epoch(1, Some(10))]);
        assert_eq!(s.state, ErasureState::LiveCleaned);
        assert_eq!(s.forgotten_by, None);
    }

    #[test]
    fn forgotten_by_is_the_epochs_end_plus_the_grace_and_never_in_the_past() {
        let grace = 3_600_000_000;
        assert_eq!(
            super::super::erasure::forgotten_by(1_000, 10),
            1_000 + grace
        );
        assert_eq!(
            super::super::erasure::forgotten_by(1_000, 5_000),
            5_000 + grace
        );
    }
}
