//! Erasure by crypto-shredding, run by the writer in a transaction of its own:
//!
//! 1. look the identifier up (HMAC under the index key); no live subject → the receipt of an
//!    erasure within the tombstone window, or 404; nothing written;
//! 2. append a `SubjectErased` entry to the system stream `auditledger:subject-erasures`, its
//!    payload (handle, reason, request reference — never the identifier) sealed under the
//!    system key, its header naming the handle;
//! 3. delete the subject's data key and index row (SQLite `secure_delete` overwrites them) and
//!    record the handle as erased;
//! 4. sign a receipt; keep it for a bounded time under a separate HMAC of the identifier, so a
//!    repeated request returns the same receipt and appends nothing;
//! 5. commit; drop the key from the in-memory cache. Cleaning the live files (WAL, dead
//!    tuples) is left to the cleaner (`cleaner.rs`), outside the writer, so an erasure holds
//!    appends up for no longer than its own commit.

use std::sync::Arc;

use serde_json::json;
use zeroize::Zeroizing;

use super::writer::{Draft, WriteError, Writer, extend_tree, load_tree, next_position};
use crate::crypto::KeyRef;
use crate::entry::{EventType, Metadata, StreamId, SubjectHandle};
use crate::receipt::{ReceiptFacts, ReceiptJson};
use crate::store::{ErasureRecord, Tombstone};
use crate::timefmt::format_micros;

pub use crate::verify::invariants::{ERASURE_STREAM, SUBJECT_ERASED, SYSTEM_STREAM_PREFIX};

/// An erasure request, validated.
pub struct EraseRequest {
    /// The subject's own identifier; zeroized when dropped, never logged.
    pub subject: Zeroizing<String>,
    /// Why (e.g. `GDPR Art. 17(1)(a)`); must not hold personal data.
    pub reason: String,
    /// The caller's reference for the request (a ticket number).
    pub request_ref: String,
    /// Who asks: recorded in the `SubjectErased` entry's metadata (`token_id`, `role`), which
    /// is the erasure's access record.
    pub actor: Option<crate::access::record::Actor>,
}

/// Why an erasure did not happen. In every case nothing was written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EraseError {
    /// No live subject has this identifier (never seen, or erased longer ago than the
    /// tombstone window).
    #[error("no subject with this identifier is known")]
    UnknownSubject,
    /// The database failed; rolled back.
    #[error("the erasure could not be committed")]
    Unavailable,
    /// The service is shutting down.
    #[error("the ledger is shutting down")]
    ShuttingDown,
    /// The subject is under a legal hold (GDPR Art. 17(3)).
    #[error("the subject is under a legal hold")]
    Held(SubjectHandle, crate::store::HoldRow),
}

enum Outcome {
    Receipt(Box<ReceiptJson>),
    Unknown,
    Held(SubjectHandle, crate::store::HoldRow),
}

impl Writer {
    /// Keeps the receipt for a repeated request, for the tombstone window, sealed under the
    /// current epoch: it dies with the epoch at the latest.
    async fn keep_tombstone(
        &self,
        tx: &mut dyn crate::store::AppendTx,
        receipt: &ReceiptJson,
        epoch: &crate::epochs::EpochKek,
        tombstone_mac: &[u8; 32],
        now: i64,
    ) -> Result<(), WriteError> {
        if self.tombstone_ttl_micros <= 0 {
            return Ok(());
        }
        let kept = KeptReceipt {
            expires_at: now.saturating_add(self.tombstone_ttl_micros),
            receipt: receipt.clone(),
        };
        let text = Zeroizing::new(
            serde_json::to_vec(&kept).map_err(|e| WriteError::Internal(e.to_string()))?,
        );
        let tombstone = Tombstone {
            sealed_receipt: epoch.kek.seal_tombstone(&text, tombstone_mac),
            kek_id: epoch.kek_id.clone(),
        };
        tx.insert_tombstone(tombstone_mac, &tombstone).await?;
        Ok(())
    }

    /// No live subject: the receipt of an erasure within the tombstone window, or unknown.
    /// Nothing is appended (the transaction rolls back). A tombstone whose epoch this process
    /// no longer holds is as good as gone.
    async fn repeated(
        &self,
        tx: &mut dyn crate::store::AppendTx,
        tombstone_mac: &[u8; 32],
        now: i64,
    ) -> Result<Outcome, WriteError> {
        let Some(t) = tx.tombstone(tombstone_mac).await? else {
            return Ok(Outcome::Unknown);
        };
        let Ok(kek) = self.vault.kek_by_id(&t.kek_id).await else {
            return Ok(Outcome::Unknown);
        };
        let text = kek
            .kek
            .open_tombstone(&t.sealed_receipt, tombstone_mac)
            .map_err(|_| WriteError::Internal("stored receipt does not open".to_owned()))?;
        let kept: KeptReceipt = serde_json::from_slice(&text)
            .map_err(|e| WriteError::Internal(format!("stored receipt unreadable: {e}")))?;
        if kept.expires_at <= now {
            return Ok(Outcome::Unknown);
        }
        let receipt = kept.receipt;
        Ok(Outcome::Receipt(Box::new(receipt)))
    }

    pub(super) async fn erase(&mut self, request: EraseRequest) -> Result<ReceiptJson, EraseError> {
        let result = self.try_erase(&request).await;
        self.record_health("erasure", result.as_ref().map(|_| ()));
        match result {
            Ok(Outcome::Receipt(r)) => Ok(*r),
            Ok(Outcome::Unknown) => Err(EraseError::UnknownSubject),
            Ok(Outcome::Held(handle, hold)) => {
                metrics::counter!(crate::telemetry::ERASURES_HELD).increment(1);
                Err(EraseError::Held(handle, hold))
            }
            Err(err) => {
                tracing::error!(error = %err, "erasure rolled back");
                Err(EraseError::Unavailable)
            }
        }
    }

    async fn try_erase(&mut self, request: &EraseRequest) -> Result<Outcome, WriteError> {
        let mut tx = self.store.begin_append().await?;
        let now = crate::timefmt::now_micros();
        let tombstone_mac = self.index.tombstone(&request.subject);
        // A live subject is always erased (even a fresh one under an identifier erased
        // before): only with none does a tombstone answer for a repeated request.
        let index_mac = self.index.index(&request.subject);
        let Some(link) = tx.subject_link(&index_mac).await? else {
            return self.repeated(tx.as_mut(), &tombstone_mac, now).await;
        };
        let handle = self.vault.open_link(&link).await?;
        // Under the writer's lock: a hold placed by any instance before is seen.
        if let Some(hold) = tx.legal_hold(&handle).await? {
            tx.rollback().await;
            return Ok(Outcome::Held(handle, hold));
        }
        // The epoch read inside the transaction: it cannot end before this erasure commits, and
        // its promised end is when the subject is forgotten in every copy.
        let epoch_row = tx
            .current_epoch()
            .await?
            .ok_or_else(|| WriteError::Internal("no KEK epoch is recorded".to_owned()))?;
        let epoch = self.vault.kek_by_id(&epoch_row.kek_id).await?;
        let forgotten_by = forgotten_by(epoch_row.rotate_by, now);

        let head = tx.head().await?;
        self.ensure_current_key(head.as_ref()).await?;
        let (seq, prev_hash, recorded_at) = next_position(head);
        let stream = StreamId::parse(ERASURE_STREAM)
            .map_err(|e| WriteError::Internal(format!("erasure stream id: {e}")))?;
        let stream_version = tx.stream_version(&stream).await?.map_or(0, |v| v + 1);
        let (system_ref, system_key) = self.vault.system_key();
        let draft = Draft {
            header: crate::entry::EntryHeader {
                ledger_id: Some(self.ledger_id),
                seq,
                stream_id: stream,
                stream_version,
                event_type: EventType::parse(SUBJECT_ERASED)
                    .map_err(|e| WriteError::Internal(format!("event type: {e}")))?,
                schema_version: 1,
                subject: Some(handle),
                recorded_at_micros: recorded_at,
                metadata: actor_metadata(request.actor.as_ref()),
            },
            data: erasure_payload(&handle, request, epoch.epoch, forgotten_by),
            key_ref: system_ref,
            key: Arc::clone(&system_key),
        };
        let records = self.build(vec![draft], prev_hash).await?;
        let entry_hash = records[0].entry_hash;
        let mut tree = load_tree(tx.as_mut(), head).await?;
        // The erasure entry is the last leaf: its inclusion path is the right edge before it.
        let inclusion_proof: Vec<String> =
            tree.nodes().iter().rev().map(|(_, h)| h.to_hex()).collect();
        let nodes = extend_tree(&mut tree, &records);
        let previous = tx.latest_checkpoint().await?.map_or(0, |c| c.tree_size);
        let checkpoint = self.sign_checkpoint(&tree, &records[0], previous);
        tx.insert(&records).await?;
        tx.insert_merkle_nodes(&nodes).await?;
        tx.insert_checkpoint(&checkpoint).await?;
        let facts = ReceiptFacts {
            ledger_id: self.ledger_id,
            subject_handle: handle,
            erased_at_micros: recorded_at,
            erasure_seq: seq,
            erasure_entry_hash: entry_hash,
            request_ref: request.request_ref.clone(),
            epoch: epoch.epoch,
            forgotten_by_micros: forgotten_by,
        };
        let (key_id, signature) = facts.sign(&self.signing);
        tx.erase_subject(
            &index_mac,
            &handle,
            seq,
            recorded_at,
            &ErasureRecord {
                request_ref: request.request_ref.clone(),
                epoch: epoch.epoch,
                forgotten_by,
                receipt_key_id: key_id.to_hex(),
                receipt_signature: signature.0.to_vec(),
            },
        )
        .await?;
        let receipt = receipt_json(
            &facts,
            &key_id.to_hex(),
            &signature.to_hex(),
            Some(checkpoint.to_json()),
            inclusion_proof,
        );
        self.keep_tombstone(tx.as_mut(), &receipt, &epoch, &tombstone_mac, now)
            .await?;
        if let Err(e) = tx.commit().await {
            // Forgotten before the outcome is known (it may stay unknown): if the erasure did
            // commit, nothing in this process may open the subject's data from the cache; if
            // it rolled back, the key is read again from the database.
            self.vault.forget(&KeyRef::Subject(handle));
            self.resolve_lost_commit(e, seq, entry_hash).await?;
        }
        self.publish(checkpoint);
        self.vault.forget(&KeyRef::Subject(handle));
        metrics::counter!(crate::telemetry::ERASURES).increment(1);
        tracing::info!(subject = %handle.to_hex(), seq = seq.0, "subject erased");
        Ok(Outcome::Receipt(Box::new(receipt)))
    }
}

/// The erasure entry's payload: handle, reason, reference, epoch, promise; never the identifier.
fn erasure_payload(
    handle: &SubjectHandle,
    request: &EraseRequest,
    epoch: u32,
    forgotten_by: i64,
) -> Zeroizing<Vec<u8>> {
    let data = json!({
        "subject_handle": handle.to_hex(),
        "reason": request.reason,
        "request_ref": request.request_ref,
        "epoch": epoch,
        "forgotten_by": format_micros(forgotten_by),
    });
    Zeroizing::new(serde_json::to_vec(&data).unwrap_or_default())
}

/// The erasure entry's metadata: who asked (its access record).
fn actor_metadata(actor: Option<&crate::access::record::Actor>) -> Metadata {
    actor
        .map(|a| {
            Metadata::from([
                ("token_id".to_owned(), a.token_id.clone()),
                ("role".to_owned(), a.role.clone()),
            ])
        })
        .unwrap_or_default()
}

/// What a tombstone seals: the receipt and when it stops being given again (sealed, because an
/// expiry in clear would date the erasure and so name its handle).
#[derive(serde::Serialize, serde::Deserialize)]
struct KeptReceipt {
    expires_at: i64,
    receipt: ReceiptJson,
}

/// Tombstones opened per read while purging.
const PURGE_BATCH: u32 = 1000;

/// Deletes the expired tombstones (and any this process cannot open: their epoch is gone);
/// returns how many.
pub(super) async fn purge_tombstones(
    store: &dyn crate::store::Store,
    vault: &crate::vault::Vault,
    now: i64,
) -> Result<u64, WriteError> {
    let mut purged = 0;
    let mut after: Option<[u8; 32]> = None;
    loop {
        let page = store.tombstones(after.as_ref(), PURGE_BATCH).await?;
        let Some((last, _)) = page.last() else {
            return Ok(purged);
        };
        after = Some(*last);
        for (mac, t) in page {
            let expired = match vault.kek_by_id(&t.kek_id).await {
                Ok(kek) => kek
                    .kek
                    .open_tombstone(&t.sealed_receipt, &mac)
                    .ok()
                    .and_then(|text| serde_json::from_slice::<KeptReceipt>(&text).ok())
                    .is_none_or(|k| k.expires_at <= now),
                Err(_) => true,
            };
            if expired {
                store.delete_tombstone(&mac).await?;
                purged += 1;
            }
        }
    }
}

/// When a subject erased now is forgotten in every copy: the current epoch's promised end
/// (`rotate_by`, or now if that has passed) plus the time its successor has to re-wrap.
#[must_use]
pub fn forgotten_by(rotate_by: i64, now: i64) -> i64 {
    let grace = i64::try_from(crate::epochs::DESTRUCTION_GRACE.as_micros()).unwrap_or(i64::MAX);
    rotate_by.max(now).saturating_add(grace)
}

/// The receipt as the API gives it.
pub(crate) fn receipt_json(
    facts: &ReceiptFacts,
    key_id: &str,
    signature: &str,
    checkpoint: Option<crate::checkpoint::CheckpointJson>,
    inclusion_proof: Vec<String>,
) -> ReceiptJson {
    ReceiptJson {
        ledger_id: facts.ledger_id.to_hex(),
        subject_handle: facts.subject_handle.to_hex(),
        erased_at: format_micros(facts.erased_at_micros),
        erasure_seq: facts.erasure_seq.0,
        erasure_entry_hash: facts.erasure_entry_hash.to_hex(),
        request_ref: facts.request_ref.clone(),
        key_id: key_id.to_owned(),
        signature: signature.to_owned(),
        epoch: facts.epoch,
        forgotten_by: format_micros(facts.forgotten_by_micros),
        caches_cleared_within_ms: super::CACHES_CLEARED_WITHIN_MS,
        checkpoint,
        inclusion_proof,
    }
}
