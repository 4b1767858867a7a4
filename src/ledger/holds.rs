//! Legal holds (GDPR Art. 17(3)): placed and released by the writer, each in a transaction of
//! its own that appends the `LegalHoldPlaced` / `LegalHoldReleased` entry and updates the
//! `legal_holds` index together, so the index never disagrees with the chain. An erasure
//! checks the index inside its own transaction (`erasure.rs`): a hold and an erasure of the
//! same subject are serialised by the writer's lock, on every instance.

use std::sync::Arc;

use tokio::sync::oneshot;
use zeroize::Zeroizing;

use super::Ledger;
use super::writer::{Draft, WriteError, Writer, WriterMsg, next_position};
use crate::access::record::{Actor, HOLD_PLACED, HOLD_RELEASED, HOLDS_STREAM, HoldRecord};
use crate::checkpoint::Checkpoint;
use crate::entry::{EventType, Metadata, Seq, StreamId, SubjectHandle};
use crate::record::Record;
use crate::store::{AppendTx, HoldRow};

/// A hold to place, or to release.
pub struct HoldRequest {
    /// The subject's own identifier; zeroized when dropped, never stored.
    pub subject: Zeroizing<String>,
    /// The case reference (placing), or the reason for the release's record.
    pub reference: String,
    /// Why; never personal data.
    pub reason: String,
    /// Who.
    pub actor: Actor,
    /// Place (true) or release (false).
    pub place: bool,
}

/// A hold placed or released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldDone {
    /// The subject.
    pub subject: SubjectHandle,
    /// Seq of the entry just appended.
    pub seq: Seq,
    /// Seq of the hold (the entry just appended, when placing).
    pub hold_seq: Seq,
    /// The hold's case reference.
    pub reference: String,
}

/// Why a hold was not placed or released. In every case nothing was written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HoldError {
    /// No live subject has this identifier.
    #[error("no subject with this identifier is known")]
    UnknownSubject,
    /// Placing: the subject is already under hold.
    #[error("the subject is already under a legal hold")]
    AlreadyHeld(SubjectHandle, HoldRow),
    /// Releasing: the subject is not under hold.
    #[error("the subject is not under a legal hold")]
    NotHeld(SubjectHandle),
    /// The database failed; rolled back.
    #[error("the hold could not be committed")]
    Unavailable,
    /// The service is shutting down.
    #[error("the ledger is shutting down")]
    ShuttingDown,
}

pub(super) struct PendingHold {
    pub request: HoldRequest,
    pub reply: oneshot::Sender<Result<HoldDone, HoldError>>,
}

impl Ledger {
    /// Places (or releases) a legal hold.
    pub async fn hold(&self, request: HoldRequest) -> Result<HoldDone, HoldError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(WriterMsg::Hold(PendingHold { request, reply }))
            .await
            .map_err(|_| HoldError::ShuttingDown)?;
        answer.await.unwrap_or(Err(HoldError::Unavailable))
    }
}

enum Step {
    Done(HoldDone),
    Refused(HoldError),
}

impl Writer {
    pub(super) async fn hold(&mut self, request: HoldRequest) -> Result<HoldDone, HoldError> {
        let result = self.try_hold(&request).await;
        self.record_health("legal hold", result.as_ref().map(|_| ()));
        match result {
            Ok(Step::Done(done)) => Ok(done),
            Ok(Step::Refused(e)) => Err(e),
            Err(err) => {
                tracing::error!(error = %err, "legal hold rolled back");
                Err(HoldError::Unavailable)
            }
        }
    }

    async fn try_hold(&mut self, request: &HoldRequest) -> Result<Step, WriteError> {
        let mut tx = self.store.begin_append().await?;
        let index_mac = self.index.index(&request.subject);
        let Some(link) = tx.subject_link(&index_mac).await? else {
            tx.rollback().await;
            return Ok(Step::Refused(HoldError::UnknownSubject));
        };
        let handle = self.vault.open_link(&link).await?;
        let existing = tx.legal_hold(&handle).await?;
        let (event_type, hold_seq, reference) = match (request.place, existing) {
            (true, Some(row)) => {
                tx.rollback().await;
                return Ok(Step::Refused(HoldError::AlreadyHeld(handle, row)));
            }
            (false, None) => {
                tx.rollback().await;
                return Ok(Step::Refused(HoldError::NotHeld(handle)));
            }
            (true, None) => (HOLD_PLACED, None, request.reference.clone()),
            (false, Some(row)) => (HOLD_RELEASED, Some(row.hold_seq), row.reference),
        };
        let record = HoldRecord {
            subject: handle,
            reference: reference.clone(),
            reason: request.reason.clone(),
            actor: request.actor.clone(),
            hold_seq: hold_seq.map(|s| s.0),
        };
        let (entry, checkpoint) = self
            .append_in_tx(tx.as_mut(), HOLDS_STREAM, event_type, record.to_metadata())
            .await?;
        let seq = entry.entry.header.seq;
        if request.place {
            tx.insert_legal_hold(&HoldRow {
                subject: handle,
                hold_seq: seq,
                reference: reference.clone(),
                placed_at: entry.entry.header.recorded_at_micros,
            })
            .await?;
        } else {
            tx.delete_legal_hold(&handle).await?;
        }
        if let Err(e) = tx.commit().await {
            self.resolve_lost_commit(e, seq, entry.entry_hash).await?;
        }
        self.key_marked = true;
        if let Some(cp) = checkpoint {
            self.publish(cp);
        }
        tracing::info!(subject = %handle.to_hex(), seq = seq.0, event_type, "legal hold changed");
        Ok(Step::Done(HoldDone {
            subject: handle,
            seq,
            hold_seq: hold_seq.unwrap_or(seq),
            reference,
        }))
    }

    /// Appends one of the ledger's own entries (payload `{}` under the system key) inside a
    /// transaction the caller commits; returns it and the checkpoint made with it, if one was
    /// due.
    pub(super) async fn append_in_tx(
        &mut self,
        tx: &mut dyn AppendTx,
        stream: &str,
        event_type: &str,
        metadata: Metadata,
    ) -> Result<(Record, Option<Checkpoint>), WriteError> {
        let internal = |e: crate::entry::NameError| WriteError::Internal(e.to_string());
        let head = tx.head().await?;
        self.ensure_current_key(head.as_ref()).await?;
        let (seq, prev_hash, recorded_at) = next_position(head);
        let stream = StreamId::parse(stream).map_err(internal)?;
        let stream_version = tx.stream_version(&stream).await?.map_or(0, |v| v + 1);
        let (system_ref, system_key) = self.vault.system_key();
        let draft = Draft {
            header: crate::entry::EntryHeader {
                ledger_id: Some(self.ledger_id),
                seq,
                stream_id: stream,
                stream_version,
                event_type: EventType::parse(event_type).map_err(internal)?,
                schema_version: 1,
                subject: None,
                recorded_at_micros: recorded_at,
                metadata,
            },
            data: Zeroizing::new(b"{}".to_vec()),
            key_ref: system_ref,
            key: Arc::clone(&system_key),
        };
        let records = self.build(vec![draft], prev_hash).await?;
        let checkpoint = self.insert_records(tx, head, &records).await?;
        let record = records
            .into_iter()
            .next()
            .ok_or_else(|| WriteError::Internal("building one entry gave none".to_owned()))?;
        Ok((record, checkpoint))
    }
}
