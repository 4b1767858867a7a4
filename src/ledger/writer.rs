//! The writer task: the only code that extends the chain.
//!
//! It owns the chain head. Requests arrive on a channel; the writer takes as many as are
//! waiting (up to a batch limit), and for the whole batch, in one transaction: checks each
//! request's expected stream version, resolves each event's subject to its handle and data key
//! (creating both for a new subject), assigns seqs, seals, hashes (sequential by nature), signs
//! (spread over cores), inserts and commits. Only after the commit returns is any caller
//! answered; if anything fails, every caller of the batch gets an error and nothing of it is
//! visible. An erasure runs alone, in its own transaction, after the appends queued before it,
//! so an append racing an erasure is either wholly before it (and erased) or wholly after it
//! (under a fresh handle and key).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rand::RngCore;
use rayon::prelude::*;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use super::erasure::{EraseError, EraseRequest};
use super::health::WriteHealth;
use super::{AppendError, AppendRequest, Appended, Committed, StageStats};
use crate::checkpoint::{Checkpoint, CheckpointBinding, TreeHead};
use crate::crypto::{DataKey, KeyRef, LedgerSigningKey, SubjectIndexKey, seal};
use crate::entry::{
    Entry, EntryHash, EntryHeader, GENESIS_PREV_HASH, LedgerId, Seq, StreamId, SubjectHandle,
};
use crate::epochs::EpochKek;
use crate::merkle::{CompactRange, MerkleHash, NodeId, decompose, leaf_hash};
use crate::receipt::ReceiptJson;
use crate::record::Record;
use crate::store::{AppendTx, ChainHead, IdempotencyRow, LinkRow, Store, StoreError, VaultRow};
use crate::telemetry;
use crate::timefmt::now_micros;
use crate::vault::{Vault, VaultError};

/// Below this many entries, signing on the writer's own thread beats fanning out.
const PARALLEL_SIGN_MIN: usize = 32;

pub(super) enum WriterMsg {
    Append(Pending),
    Erase(PendingErase),
    /// Make a checkpoint if the log grew since the last one; answer with the newest.
    Checkpoint(Option<oneshot::Sender<Result<Option<Checkpoint>, ()>>>),
    /// Hand signing over to a new key.
    Rotate(Box<super::rotation::PendingRotate>),
    /// Try a small write: whether the database takes writes again after a failure.
    Probe(oneshot::Sender<bool>),
    /// Place or release a legal hold.
    Hold(super::holds::PendingHold),
    Shutdown(oneshot::Sender<()>),
}

/// Work that runs alone, in a transaction of its own, after the appends queued before it.
enum Solo {
    Erase(PendingErase),
    Rotate(Box<super::rotation::PendingRotate>),
    Checkpoint(Option<oneshot::Sender<Result<Option<Checkpoint>, ()>>>),
    Probe(oneshot::Sender<bool>),
    Hold(super::holds::PendingHold),
}

/// An append's idempotency key (hashed) and the digest of its request (see `idempotency`).
#[derive(Clone, Copy)]
pub(super) struct IdempotencyTag {
    pub key_hash: [u8; 32],
    pub digest: [u8; 32],
}

/// What one append transaction writes, gathered request by request.
#[derive(Default)]
struct BatchWrites {
    drafts: Vec<Draft>,
    /// Idempotency keys recorded by this transaction.
    keys: HashMap<[u8; 32], IdempotencyRow>,
    subjects: SubjectKeys,
}

impl BatchWrites {
    /// The idempotency key's record, if this batch or an earlier append recorded it.
    async fn recorded(
        &self,
        tx: &mut dyn AppendTx,
        tag: Option<IdempotencyTag>,
        not_before: i64,
    ) -> Result<Option<IdempotencyRow>, StoreError> {
        let Some(tag) = tag else { return Ok(None) };
        match self.keys.get(&tag.key_hash) {
            Some(row) => Ok(Some(*row)),
            None => tx.idempotency(&tag.key_hash, not_before).await,
        }
    }
}

pub(super) struct Pending {
    pub request: AppendRequest,
    /// The request's idempotency key and digest, if it has a key.
    pub idempotency: Option<IdempotencyTag>,
    pub reply: oneshot::Sender<Result<Committed, AppendError>>,
}

pub(super) struct PendingErase {
    pub request: EraseRequest,
    pub reply: oneshot::Sender<Result<ReceiptJson, EraseError>>,
}

/// Why a write transaction failed; it was rolled back.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("{0}")]
    Internal(String),
    /// COMMIT was sent and its answer lost, and looking for the transaction's entries on
    /// another connection did not tell whether it took effect.
    #[error("the outcome of a commit is unknown: {0}")]
    OutcomeUnknown(StoreError),
}

/// An entry with its seq and header fixed, waiting to be sealed, hashed and signed.
pub(super) struct Draft {
    pub header: EntryHeader,
    pub data: Zeroizing<Vec<u8>>,
    pub key_ref: KeyRef,
    pub key: Arc<DataKey>,
}

/// Where the next entry goes: its seq, the hash it links to, and the earliest time it may carry
/// (time never runs backwards along the chain, so time travel by timestamp is sound).
pub(super) fn next_position(head: Option<ChainHead>) -> (Seq, EntryHash, i64) {
    (
        head.map_or(Seq(0), |h| h.seq.next()),
        head.map_or(GENESIS_PREV_HASH, |h| h.entry_hash),
        now_micros().max(head.map_or(i64::MIN, |h| h.recorded_at_micros)),
    )
}

/// Subjects resolved within one transaction, and the keys it created.
#[derive(Default)]
pub(super) struct SubjectKeys {
    by_mac: HashMap<[u8; 32], (SubjectHandle, Arc<DataKey>)>,
    /// The links read for the whole batch in one query, and which MACs that query covered
    /// (a MAC it covered without a link is a new subject).
    links: HashMap<[u8; 32], LinkRow>,
    looked_up: std::collections::HashSet<[u8; 32]>,
    created: Vec<(KeyRef, Arc<DataKey>)>,
    /// The current epoch, once read in this transaction.
    epoch: Option<Arc<EpochKek>>,
}

pub(super) struct Writer {
    pub ledger_id: LedgerId,
    pub store: Arc<dyn Store>,
    pub vault: Arc<Vault>,
    pub signing: Arc<LedgerSigningKey>,
    /// Where readers find the key that signs now; replaced on rotation.
    pub cell: Arc<super::SigningCell>,
    pub index: Arc<SubjectIndexKey>,
    pub max_batch_events: usize,
    pub tombstone_ttl_micros: i64,
    pub checkpoint_every: u64,
    pub key_marked: bool,
    /// The keys directory, where a rotation's new key waits and its result is recorded.
    pub keys_dir: Option<std::path::PathBuf>,
    pub stats: Arc<StageStats>,
    /// Newly committed checkpoints go to the witness publisher.
    pub published: Option<mpsc::UnboundedSender<Checkpoint>>,
    /// Whether the last write succeeded.
    pub health: Arc<WriteHealth>,
    /// How long idempotency keys hold, in microseconds.
    pub idempotency_window_micros: i64,
    /// Bumped after each round of commits: wakes this instance's subscribers.
    pub commits: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Writer {
    pub(super) async fn run(mut self, mut receiver: mpsc::Receiver<WriterMsg>) {
        let mut shutdown_acks = Vec::new();
        while let Some(first) = receiver.recv().await {
            let mut batch = Vec::new();
            let mut solo = None;
            let mut events = 0;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Append(p) => {
                        events += p.request.events.len();
                        batch.push(p);
                    }
                    WriterMsg::Erase(e) => {
                        // Runs alone, after the appends that were queued before it.
                        solo = Some(Solo::Erase(e));
                        break;
                    }
                    WriterMsg::Checkpoint(reply) => {
                        solo = Some(Solo::Checkpoint(reply));
                        break;
                    }
                    WriterMsg::Rotate(r) => {
                        solo = Some(Solo::Rotate(r));
                        break;
                    }
                    WriterMsg::Probe(reply) => {
                        solo = Some(Solo::Probe(reply));
                        break;
                    }
                    WriterMsg::Hold(h) => {
                        solo = Some(Solo::Hold(h));
                        break;
                    }
                    WriterMsg::Shutdown(ack) => {
                        // Refuse new sends; what is already queued still gets committed.
                        receiver.close();
                        shutdown_acks.push(ack);
                    }
                }
                if events < self.max_batch_events {
                    next = receiver.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_batch(batch).await;
            }
            match solo {
                Some(Solo::Erase(e)) => {
                    let result = self.erase(e.request).await;
                    let _ = e.reply.send(result);
                }
                Some(Solo::Hold(h)) => {
                    let result = self.hold(h.request).await;
                    let _ = h.reply.send(result);
                }
                Some(Solo::Rotate(r)) => {
                    let result = self.rotate(r.new_key).await;
                    if let Some(reply) = r.reply {
                        let _ = reply.send(result);
                    }
                }
                Some(Solo::Probe(reply)) => {
                    let result = self.probe().await;
                    self.record_health("probe", result.as_ref().copied());
                    let _ = reply.send(result.is_ok());
                }
                Some(Solo::Checkpoint(reply)) => {
                    let result = self.checkpoint_now().await;
                    self.record_health("checkpoint", result.as_ref().map(|_| ()));
                    let result = result.map_err(|e| {
                        tracing::error!(error = %e, "checkpoint rolled back");
                    });
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                None => {}
            }
            self.commits.send_modify(|n| *n = n.wrapping_add(1));
        }
        for ack in shutdown_acks {
            let _ = ack.send(());
        }
    }

    async fn commit_batch(&mut self, batch: Vec<Pending>) {
        let mut replies = Vec::with_capacity(batch.len());
        let mut requests = Vec::with_capacity(batch.len());
        for p in batch {
            replies.push(p.reply);
            requests.push((p.request, p.idempotency));
        }
        let outcome = self.write_batch(requests).await;
        self.record_health("append", outcome.as_ref().map(|_| ()));
        match outcome {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "append batch rolled back");
                metrics::counter!(telemetry::COMMIT_FAILURES).increment(1);
                let answer = if matches!(err, WriteError::OutcomeUnknown(_)) {
                    AppendError::OutcomeUnknown
                } else {
                    AppendError::Unavailable("the database refused the write".to_owned())
                };
                for reply in replies {
                    let _ = reply.send(Err(answer.clone()));
                }
            }
        }
    }

    /// Records a write's outcome for `/readyz`: a database failure makes the service
    /// unable to write until a write succeeds.
    pub(super) fn record_health(&self, what: &str, result: Result<(), &WriteError>) {
        match result {
            Ok(()) => self.health.succeeded(),
            Err(WriteError::Store(e) | WriteError::OutcomeUnknown(e)) => {
                self.health.failed(what, e);
            }
            Err(_) => {}
        }
    }

    /// A small write that changes nothing of the ledger.
    async fn probe(&mut self) -> Result<(), WriteError> {
        let mut tx = self.store.begin_append().await?;
        tx.write_probe().await?;
        tx.commit().await?;
        Ok(())
    }

    /// COMMIT of the transaction ending with the entry (`seq`, `hash`) failed: finds out on
    /// another connection whether it took effect. `Ok` if it did (the caller goes on as after a
    /// commit); the commit's error if it did not (nothing was written); `OutcomeUnknown` if it
    /// cannot tell.
    pub(super) async fn resolve_lost_commit(
        &self,
        error: StoreError,
        seq: Seq,
        hash: EntryHash,
    ) -> Result<(), WriteError> {
        let outcome = commit_outcome(self.store.as_ref(), seq, hash).await;
        let label = match outcome {
            Some(true) => "committed",
            Some(false) => "not_committed",
            None => "unknown",
        };
        metrics::counter!(telemetry::COMMIT_OUTCOMES_RESOLVED, "outcome" => label).increment(1);
        tracing::warn!(error = %error, seq = seq.0, outcome = label, "a commit failed; its outcome was looked up");
        match outcome {
            Some(true) => Ok(()),
            Some(false) => Err(error.into()),
            None => Err(WriteError::OutcomeUnknown(error)),
        }
    }

    /// The data key of the subject named by `identifier`, creating subject and key if new.
    async fn subject_key(
        &self,
        tx: &mut dyn AppendTx,
        keys: &mut SubjectKeys,
        identifier: &str,
    ) -> Result<(SubjectHandle, Arc<DataKey>), WriteError> {
        let mac = self.index.index(identifier);
        if let Some((h, k)) = keys.by_mac.get(&mac) {
            return Ok((*h, Arc::clone(k)));
        }
        let link = if keys.looked_up.contains(&mac) {
            keys.links.remove(&mac)
        } else {
            tx.subject_link(&mac).await?
        };
        let (handle, key) = if let Some(link) = link {
            let handle = match self.vault.open_link(&link).await {
                // PostgreSQL: re-sealed under a new epoch, and the old one destroyed, since
                // the row was read; read it again.
                Err(VaultError::NoSuchKek { .. }) => {
                    let link = tx.subject_link(&mac).await?.ok_or_else(|| {
                        WriteError::Internal("a subject link vanished mid-transaction".to_owned())
                    })?;
                    self.vault.open_link(&link).await?
                }
                other => other?,
            };
            let key = self
                .vault
                .key(&KeyRef::Subject(handle))
                .await?
                .ok_or_else(|| {
                    WriteError::Internal(format!(
                        "subject {} is indexed but its key is missing",
                        handle.to_hex()
                    ))
                })?;
            (handle, key)
        } else {
            let mut id = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut id);
            let handle = SubjectHandle(id);
            let key = Arc::new(DataKey::generate());
            let key_ref = KeyRef::Subject(handle);
            let epoch = self.current_epoch(tx, keys).await?;
            let row = VaultRow {
                key_ref,
                wrapped: epoch.kek.wrap(&key, &key_ref),
                kek_id: epoch.kek_id.clone(),
            };
            let link = LinkRow {
                index_mac: mac,
                sealed_handle: epoch.kek.seal_link(&handle, &mac),
                kek_id: epoch.kek_id.clone(),
            };
            tx.insert_subject(&link, &row).await?;
            keys.created.push((key_ref, Arc::clone(&key)));
            (handle, key)
        };
        keys.by_mac.insert(mac, (handle, Arc::clone(&key)));
        Ok((handle, key))
    }

    /// The epoch new keys are wrapped under in this transaction: the current one as the
    /// database says inside it (so it cannot be destroyed before the commit), never an epoch
    /// this process merely remembers.
    pub(super) async fn current_epoch(
        &self,
        tx: &mut dyn AppendTx,
        keys: &mut SubjectKeys,
    ) -> Result<Arc<EpochKek>, WriteError> {
        if let Some(e) = &keys.epoch {
            return Ok(Arc::clone(e));
        }
        let row = tx
            .current_epoch()
            .await?
            .ok_or_else(|| WriteError::Internal("no KEK epoch is recorded".to_owned()))?;
        let epoch = self.vault.kek_by_id(&row.kek_id).await?;
        keys.epoch = Some(Arc::clone(&epoch));
        Ok(epoch)
    }

    /// Every stream version and subject link a batch needs, read up front in one query each
    /// rather than one round trip per stream and per subject: the versions (`None` for a
    /// stream without events), and the links into `subjects`.
    async fn prefetch(
        &self,
        tx: &mut dyn AppendTx,
        requests: &[(AppendRequest, Option<IdempotencyTag>)],
        subjects: &mut SubjectKeys,
    ) -> Result<HashMap<StreamId, Option<u64>>, WriteError> {
        let mut streams: Vec<StreamId> = requests.iter().map(|(r, _)| r.stream.clone()).collect();
        streams.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        streams.dedup();
        let found = tx.stream_versions(&streams).await?;
        let macs: std::collections::HashSet<[u8; 32]> = requests
            .iter()
            .flat_map(|(r, _)| r.events.iter())
            .filter_map(|e| e.subject.as_deref())
            .map(|identifier| self.index.index(identifier))
            .collect();
        if !macs.is_empty() {
            let macs: Vec<[u8; 32]> = macs.into_iter().collect();
            subjects.links = tx.subject_links(&macs).await?;
            subjects.looked_up = macs.into_iter().collect();
        }
        Ok(streams
            .into_iter()
            .map(|s| {
                let v = found.get(&s).copied();
                (s, v)
            })
            .collect())
    }

    /// Runs one transaction for `requests`; returns one result per request, in order.
    async fn write_batch(
        &mut self,
        requests: Vec<(AppendRequest, Option<IdempotencyTag>)>,
    ) -> Result<Vec<Result<Committed, AppendError>>, WriteError> {
        let mut tx = self.store.begin_append().await?;
        let head = tx.head().await?;
        self.ensure_current_key(head.as_ref()).await?;
        let (mut next_seq, prev_hash, recorded_at) = next_position(head);
        let (system_ref, system_key) = self.vault.system_key();
        let not_before = recorded_at.saturating_sub(self.idempotency_window_micros);

        let mut batch = BatchWrites::default();
        let mut versions = self
            .prefetch(tx.as_mut(), &requests, &mut batch.subjects)
            .await?;
        let mut results = Vec::with_capacity(requests.len());
        for (req, idempotency) in requests {
            // Before the version check: a retry of a committed append must get its original
            // answer, although its expectation no longer holds.
            if let Some(row) = batch.recorded(tx.as_mut(), idempotency, not_before).await? {
                results.push(Ok(Committed::Duplicate(row, Box::new(req))));
                continue;
            }
            let current = if let Some(v) = versions.get(&req.stream) {
                *v
            } else {
                let v = tx.stream_version(&req.stream).await?;
                versions.insert(req.stream.clone(), v);
                v
            };
            if !req.expected.admits(current) {
                results.push(Err(AppendError::VersionConflict {
                    stream: req.stream,
                    expected: req.expected,
                    actual: current,
                }));
                continue;
            }
            let first_version = current.map_or(0, |v| v + 1);
            let first_seq = next_seq;
            let count = req.events.len() as u64;
            for (i, ev) in (0u64..).zip(req.events) {
                let (subject, key_ref, key) = match &ev.subject {
                    None => (None, system_ref, Arc::clone(&system_key)),
                    Some(identifier) => {
                        let (handle, key) = self
                            .subject_key(tx.as_mut(), &mut batch.subjects, identifier)
                            .await?;
                        (Some(handle), KeyRef::Subject(handle), key)
                    }
                };
                batch.drafts.push(Draft {
                    header: EntryHeader {
                        ledger_id: Some(self.ledger_id),
                        seq: next_seq,
                        stream_id: req.stream.clone(),
                        stream_version: first_version + i,
                        event_type: ev.event_type,
                        schema_version: ev.schema_version,
                        subject,
                        recorded_at_micros: recorded_at,
                        metadata: ev.metadata,
                    },
                    data: ev.data,
                    key_ref,
                    key,
                });
                next_seq = next_seq.next();
            }
            let last_version = first_version + count - 1;
            let last_seq = Seq(next_seq.0 - 1);
            versions.insert(req.stream, Some(last_version));
            if let Some(tag) = idempotency {
                batch.keys.insert(
                    tag.key_hash,
                    IdempotencyRow {
                        key_hash: tag.key_hash,
                        request_digest: tag.digest,
                        first_seq,
                        last_seq,
                        created_at_micros: recorded_at,
                    },
                );
            }
            results.push(Ok(Committed::New(Appended {
                first_seq,
                last_seq,
                stream_version: last_version,
                entries: (first_seq.0..next_seq.0)
                    .map(|s| (Seq(s), EntryHash([0; 32])))
                    .collect(),
                replayed: false,
            })));
        }
        let conflicts = results.iter().filter(|r| r.is_err()).count() as u64;
        metrics::counter!(telemetry::VERSION_CONFLICTS).increment(conflicts);
        if batch.drafts.is_empty() {
            // Only conflicts and repeats: nothing to write.
            tx.rollback().await;
            return Ok(results);
        }
        let records = self.write_drafts(tx, head, prev_hash, batch).await?;
        fill_hashes(&mut results, &records);
        Ok(results)
    }

    /// Builds the batch's records, inserts them with its idempotency keys, and commits.
    async fn write_drafts(
        &mut self,
        mut tx: Box<dyn AppendTx>,
        head: Option<ChainHead>,
        prev_hash: EntryHash,
        batch: BatchWrites,
    ) -> Result<Vec<Record>, WriteError> {
        let records = self.build(batch.drafts, prev_hash).await?;
        let started = Instant::now();
        let checkpoint = self.insert_records(tx.as_mut(), head, &records).await?;
        let recorded: Vec<IdempotencyRow> = batch.keys.into_values().collect();
        tx.insert_idempotency(&recorded).await?;
        if let Err(e) = tx.commit().await {
            let last = &records[records.len() - 1];
            self.resolve_lost_commit(e, last.entry.header.seq, last.entry_hash)
                .await?;
        }
        self.key_marked = true;
        if let Some(cp) = checkpoint {
            self.publish(cp);
        }
        for (key_ref, key) in batch.subjects.created {
            self.vault.remember(key_ref, key);
        }
        record_commit_metrics(&records, started);
        self.stats
            .insert_ns
            .fetch_add(elapsed_ns(started), Ordering::Relaxed);
        self.stats
            .entries
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        Ok(records)
    }

    /// Inserts records and the tree nodes they complete; signs and inserts a checkpoint if one
    /// is due.
    pub(super) async fn insert_records(
        &self,
        tx: &mut dyn AppendTx,
        head: Option<ChainHead>,
        records: &[Record],
    ) -> Result<Option<Checkpoint>, WriteError> {
        // `head` was read under this transaction's lock: nobody has appended since.
        let mut tree = load_tree(tx, head).await?;
        let nodes = extend_tree(&mut tree, records);
        tx.insert(records).await?;
        tx.insert_merkle_nodes(&nodes).await?;
        if !self.key_marked {
            tx.mark_signing_key_used(&self.signing.key_id(), records[0].entry.header.seq)
                .await?;
        }
        let last_checkpoint = tx.latest_checkpoint().await?.map_or(0, |c| c.tree_size);
        if tree.size() - last_checkpoint < self.checkpoint_every {
            return Ok(None);
        }
        let cp = self.sign_checkpoint(&tree, &records[records.len() - 1], last_checkpoint);
        tx.insert_checkpoint(&cp).await?;
        Ok(Some(cp))
    }

    /// Seals, hashes and signs drafts on a blocking thread.
    pub(super) async fn build(
        &self,
        drafts: Vec<Draft>,
        prev_hash: EntryHash,
    ) -> Result<Vec<Record>, WriteError> {
        let signing = Arc::clone(&self.signing);
        let stats = Arc::clone(&self.stats);
        tokio::task::spawn_blocking(move || build_records(drafts, prev_hash, &signing, &stats))
            .await
            .map_err(|e| WriteError::Internal(format!("record builder failed: {e}")))
    }
}

impl Writer {
    /// Signs a checkpoint of `tree`, whose last entry is `last`, following the checkpoint of
    /// size `previous` (0: none).
    pub(super) fn sign_checkpoint(
        &self,
        tree: &CompactRange,
        last: &Record,
        previous: u64,
    ) -> Checkpoint {
        Checkpoint::sign(
            &self.signing,
            CheckpointBinding {
                ledger_id: self.ledger_id,
                previous_tree_size: previous,
            },
            TreeHead {
                tree_size: tree.size(),
                root_hash: tree.root(),
                last_entry_hash: last.entry_hash,
                timestamp_micros: last.entry.header.recorded_at_micros.max(now_micros()),
            },
        )
    }

    /// Hands a committed checkpoint to the witness publisher.
    pub(super) fn publish(&self, cp: Checkpoint) {
        metrics::counter!(telemetry::CHECKPOINTS).increment(1);
        #[expect(clippy::cast_precision_loss, reason = "a tree size as a gauge value")]
        metrics::gauge!(telemetry::CHECKPOINT_TREE_SIZE).set(cp.tree_size as f64);
        if let Some(p) = &self.published {
            let _ = p.send(cp);
        }
    }

    /// Makes a checkpoint of the current head if the log grew since the last one.
    async fn checkpoint_now(&mut self) -> Result<Option<Checkpoint>, WriteError> {
        let mut tx = self.store.begin_append().await?;
        let Some(head) = tx.head().await? else {
            return Ok(None);
        };
        self.ensure_current_key(Some(&head)).await?;
        let latest = tx.latest_checkpoint().await?;
        if latest
            .as_ref()
            .is_some_and(|c| c.tree_size == head.seq.0 + 1)
        {
            return Ok(latest);
        }
        let tree = load_tree(tx.as_mut(), Some(head)).await?;
        let cp = Checkpoint::sign(
            &self.signing,
            CheckpointBinding {
                ledger_id: self.ledger_id,
                previous_tree_size: latest.map_or(0, |c| c.tree_size),
            },
            TreeHead {
                tree_size: tree.size(),
                root_hash: tree.root(),
                last_entry_hash: head.entry_hash,
                timestamp_micros: now_micros().max(head.recorded_at_micros),
            },
        );
        tx.insert_checkpoint(&cp).await?;
        tx.commit().await?;
        self.publish(cp.clone());
        Ok(Some(cp))
    }
}

/// The right edge of the tree as of `head`, read from stored nodes under the transaction.
pub(super) async fn load_tree(
    tx: &mut dyn AppendTx,
    head: Option<ChainHead>,
) -> Result<CompactRange, WriteError> {
    let Some(head) = head else {
        return Ok(CompactRange::new());
    };
    let size = head.seq.0 + 1;
    let ids = decompose(0, size);
    let inner: Vec<NodeId> = ids.iter().filter(|id| id.level > 0).copied().collect();
    let stored = tx.merkle_nodes(&inner).await?;
    let hashes = ids
        .iter()
        .map(|id| {
            if id.level == 0 {
                // The only leaf on the right edge is the head itself.
                Some(leaf_hash(&head.entry_hash.0))
            } else {
                stored.get(id).copied()
            }
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            WriteError::Internal(format!(
                "the stored Merkle tree is incomplete at size {size}"
            ))
        })?;
    CompactRange::from_hashes(size, &hashes).map_err(|e| WriteError::Internal(e.to_string()))
}

/// Appends `records` as leaves; returns the perfect subtrees of height >= 1 they complete.
pub(super) fn extend_tree(
    tree: &mut CompactRange,
    records: &[Record],
) -> Vec<(NodeId, MerkleHash)> {
    let mut nodes = Vec::with_capacity(records.len() + 8);
    for r in records {
        tree.append(leaf_hash(&r.entry_hash.0), |id, hash| {
            if id.level > 0 {
                nodes.push((id, hash));
            }
        });
    }
    nodes
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counts and seqs as metric samples"
)]
fn record_commit_metrics(records: &[Record], started: Instant) {
    metrics::counter!(telemetry::EVENTS_APPENDED).increment(records.len() as u64);
    metrics::counter!(telemetry::COMMITS).increment(1);
    metrics::histogram!(telemetry::COMMIT_BATCH_EVENTS).record(records.len() as f64);
    metrics::histogram!(telemetry::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    if let Some(last) = records.last() {
        metrics::gauge!(telemetry::HEAD_SEQ).set(last.entry.header.seq.0 as f64);
    }
}

/// Fills in each acknowledged entry's hash, now that it exists; records are in seq order.
fn fill_hashes(results: &mut [Result<Committed, AppendError>], records: &[Record]) {
    let base = records[0].entry.header.seq.0;
    let committed = results.iter_mut().filter_map(|r| match r {
        Ok(Committed::New(appended)) => Some(appended),
        _ => None,
    });
    for appended in committed {
        for (seq, hash) in &mut appended.entries {
            let idx = usize::try_from(seq.0 - base).unwrap_or(usize::MAX);
            if let Some(r) = records.get(idx) {
                *hash = r.entry_hash;
            }
        }
    }
}

/// How long a lost commit's outcome is looked for before it is reported unknown.
const OUTCOME_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the transaction whose last entry is (`seq`, `hash`) was committed: `None` if that
/// cannot be found out within [`OUTCOME_DEADLINE`]. The look-up runs in a write transaction of
/// its own, so it waits for the writer's lock, and thus for the failed transaction to end
/// (PostgreSQL releases its advisory lock only when its session has committed or aborted):
/// what it sees then is final.
async fn commit_outcome(store: &dyn Store, seq: Seq, hash: EntryHash) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + OUTCOME_DEADLINE;
    loop {
        let attempt = async {
            let mut tx = store.begin_append().await?;
            let found = tx.entry_hash_at(seq).await?;
            tx.rollback().await;
            Ok::<_, StoreError>(found)
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(found)) => return Some(found == Some(hash)),
            Ok(Err(e)) => tracing::warn!(error = %e, "looking for a lost commit failed; retrying"),
            Err(_) => return None,
        }
        if tokio::time::Instant::now() + std::time::Duration::from_millis(250) >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

pub(super) fn elapsed_ns(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Seals, hashes and signs drafts that continue a chain whose last hash is `prev_hash`.
fn build_records(
    drafts: Vec<Draft>,
    mut prev_hash: EntryHash,
    signing: &LedgerSigningKey,
    stats: &StageStats,
) -> Vec<Record> {
    let parallel = drafts.len() >= PARALLEL_SIGN_MIN;
    let t = Instant::now();
    let seal_one = |d: &Draft| seal(&d.key, &d.key_ref, &d.header.payload_aad(), &d.data);
    let sealed: Vec<_> = if parallel {
        drafts.par_iter().map(seal_one).collect()
    } else {
        drafts.iter().map(seal_one).collect()
    };
    stats.seal_ns.fetch_add(elapsed_ns(t), Ordering::Relaxed);

    // The chain is sequential by nature: each hash covers the one before.
    let t = Instant::now();
    let mut chained = Vec::with_capacity(drafts.len());
    for (draft, payload) in drafts.into_iter().zip(sealed) {
        let entry = Entry {
            header: draft.header,
            payload_digest: payload.digest(),
            prev_hash,
        };
        let entry_hash = entry.hash();
        prev_hash = entry_hash;
        chained.push((entry, payload, entry_hash));
    }
    stats.hash_ns.fetch_add(elapsed_ns(t), Ordering::Relaxed);

    let t = Instant::now();
    let key_id = signing.key_id();
    let make = |(entry, payload, entry_hash): (Entry, _, EntryHash)| Record {
        entry,
        payload: Some(payload),
        signature: signing.sign_entry(&entry_hash),
        entry_hash,
        key_id,
    };
    let records: Vec<Record> = if parallel {
        chained.into_par_iter().map(make).collect()
    } else {
        chained.into_iter().map(make).collect()
    };
    stats.sign_ns.fetch_add(elapsed_ns(t), Ordering::Relaxed);
    records
}
