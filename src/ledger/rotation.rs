//! Signing-key rotation, run by the writer in a transaction of its own (format:
//! [`crate::rotation`]): the rotation entry, signed by the old key and countersigned by the new
//! one, and a checkpoint over it signed by the new key, commit together; only then does the
//! writer sign with the new key, and the keys directory is brought in line (the old public key
//! to `retired/` with its exact range, the new key to `signing.key`).
//!
//! Several instances may share one PostgreSQL database and one keys directory: the one that
//! takes the ledger lock first writes the rotation; every other instance sees, at its next
//! write, that the chain now names another key, loads that key from the keys directory and
//! carries on with it. An instance that does not hold the key the chain names refuses to write.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use super::writer::{Draft, WriteError, Writer, extend_tree, load_tree, next_position};
use super::{ActiveKey, AppendError};
use crate::crypto::LedgerSigningKey;
use crate::entry::{EntryHeader, EventType, Seq, StreamId};
use crate::keyfiles;
use crate::rotation::{KEYS_STREAM, Rotation, RotationPoint, SIGNING_KEY_ROTATED};
use crate::store::ChainHead;

/// A rotation waiting for the writer.
pub struct PendingRotate {
    /// The key to hand over to.
    pub new_key: LedgerSigningKey,
    /// Where to answer with the rotation entry's seq.
    pub reply: Option<oneshot::Sender<Result<Seq, AppendError>>>,
}

impl Writer {
    /// Hands signing over to `new_key`; returns the rotation entry's seq. If another instance
    /// already rotated to this key, adopts it and returns the seq it signs from, minus one.
    pub(super) async fn rotate(&mut self, new_key: LedgerSigningKey) -> Result<Seq, AppendError> {
        match self.try_rotate(new_key).await {
            Ok(seq) => Ok(seq),
            Err(e) => {
                tracing::error!(error = %e, "signing-key rotation rolled back");
                Err(AppendError::Unavailable(
                    "the rotation could not be committed".to_owned(),
                ))
            }
        }
    }

    async fn try_rotate(&mut self, new_key: LedgerSigningKey) -> Result<Seq, WriteError> {
        let mut tx = self.store.begin_append().await?;
        let head = tx.head().await?;
        if let Some(h) = &head
            && h.next_key() == new_key.key_id()
        {
            // Another instance rotated to this key already.
            drop(tx);
            self.ensure_current_key(Some(h)).await?;
            return Ok(Seq(self.cell.current().first_seq.saturating_sub(1)));
        }
        self.ensure_current_key(head.as_ref()).await?;
        let old = Arc::clone(&self.signing);
        let old_first = self.cell.current().first_seq;
        let (seq, prev_hash, recorded_at) = next_position(head);
        let stream = StreamId::parse(KEYS_STREAM)
            .map_err(|e| WriteError::Internal(format!("key stream id: {e}")))?;
        let stream_version = tx.stream_version(&stream).await?.map_or(0, |v| v + 1);
        let rotation = Rotation::countersign(
            &new_key,
            &RotationPoint {
                ledger_id: self.ledger_id,
                seq,
                prev_hash,
                old_key: old.public_key(),
            },
        );
        let data = json!({
            "previous_key_id": old.key_id().to_hex(),
            "new_key_id": new_key.key_id().to_hex(),
        });
        let (system_ref, system_key) = self.vault.system_key();
        let draft = Draft {
            header: EntryHeader {
                ledger_id: Some(self.ledger_id),
                seq,
                stream_id: stream,
                stream_version,
                event_type: EventType::parse(SIGNING_KEY_ROTATED)
                    .map_err(|e| WriteError::Internal(format!("event type: {e}")))?,
                schema_version: 1,
                subject: None,
                recorded_at_micros: recorded_at,
                metadata: rotation.to_metadata(),
            },
            data: Zeroizing::new(serde_json::to_vec(&data).unwrap_or_default()),
            key_ref: system_ref,
            key: Arc::clone(&system_key),
        };
        // Signed by the old key: the writer still holds it.
        let records = self.build(vec![draft], prev_hash).await?;
        let mut tree = load_tree(tx.as_mut(), head).await?;
        let nodes = extend_tree(&mut tree, &records);
        let previous = tx.latest_checkpoint().await?.map_or(0, |c| c.tree_size);
        tx.insert(&records).await?;
        tx.insert_merkle_nodes(&nodes).await?;
        if !self.key_marked {
            tx.mark_signing_key_used(&old.key_id(), seq).await?;
        }
        tx.record_rotation(&old.key_id(), &new_key.public_key(), seq)
            .await?;
        // From here on only the new key signs: the checkpoint over the rotation too.
        let new_key = Arc::new(new_key);
        self.signing = Arc::clone(&new_key);
        let checkpoint = self.sign_checkpoint(&tree, &records[0], previous);
        let committed = async {
            tx.insert_checkpoint(&checkpoint).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = committed {
            self.signing = old;
            return Err(e.into());
        }
        self.cell.replace(ActiveKey {
            key: Arc::clone(&new_key),
            first_seq: seq.0 + 1,
        });
        self.key_marked = true;
        self.publish(checkpoint);
        metrics::counter!(crate::telemetry::KEY_ROTATIONS).increment(1);
        tracing::info!(
            seq = seq.0,
            old = %old.key_id(),
            new = %new_key.key_id(),
            "signing key rotated"
        );
        if let Some(dir) = &self.keys_dir
            && let Err(e) =
                keyfiles::finish_rotation(dir, &old.public_key(), old_first, seq.0, &new_key)
        {
            tracing::error!(error = %e, "the rotation is committed, but the keys directory could not be updated; it will be on the next start");
        }
        Ok(seq)
    }

    /// Makes sure the key this writer signs with is the one the chain names for the next entry,
    /// adopting a rotation another instance made (the new key from the keys directory).
    pub(super) async fn ensure_current_key(
        &mut self,
        head: Option<&ChainHead>,
    ) -> Result<(), WriteError> {
        let Some(head) = head else {
            return Ok(());
        };
        let wanted = head.next_key();
        if wanted == self.signing.key_id() {
            return Ok(());
        }
        let found = match &self.keys_dir {
            Some(dir) => [
                keyfiles::read_next_signing_key(dir).ok().flatten(),
                keyfiles::load(dir).ok().map(|m| m.signing),
            ]
            .into_iter()
            .flatten()
            .find(|k| k.key_id() == wanted),
            None => None,
        };
        let Some(key) = found else {
            return Err(WriteError::Internal(format!(
                "the chain names signing key {wanted} for seq {}, which this instance does not hold; it writes nothing until that key is in its keys directory",
                head.seq.next()
            )));
        };
        let first_seq = crate::store::key_first_seq(self.store.as_ref(), &wanted)
            .await?
            .map_or(head.seq.0 + 1, |s| s.0);
        tracing::info!(key = %wanted, first_seq, "adopted the signing key another instance rotated to");
        let key = Arc::new(key);
        self.signing = Arc::clone(&key);
        self.cell.replace(ActiveKey { key, first_seq });
        self.key_marked = true;
        Ok(())
    }
}
