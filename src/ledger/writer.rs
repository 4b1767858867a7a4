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
//!
//! Batches are pipelined (`batch`): while one commits in a task of its own, the next is read,
//! sealed, hashed and signed on top of what the first writes, and lands only if, under the
//! lock, the head is still the entry it was built on. Callers are still answered in order and
//! only after their own batch's commit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rayon::prelude::*;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use super::batch::{
    self, Carry, Lander, Landing, Prepared, Preparer, Reply, Request, resolve_lost_commit,
};
use super::erasure::{EraseError, EraseRequest};
use super::health::WriteHealth;
use super::{AppendError, AppendRequest, Committed, StageStats};
use crate::checkpoint::{Checkpoint, CheckpointBinding, TreeHead};
use crate::crypto::{DataKey, KeyRef, LedgerSigningKey, SubjectIndexKey, seal};
use crate::entry::{Entry, EntryHash, EntryHeader, GENESIS_PREV_HASH, LedgerId, Seq};
use crate::merkle::{CompactRange, MerkleHash, NodeId, decompose, leaf_hash};
use crate::receipt::ReceiptJson;
use crate::record::Record;
use crate::store::{AppendTx, ChainHead, Store, StoreError};
use crate::telemetry;
use crate::timefmt::now_micros;
use crate::vault::{Vault, VaultError};

/// Below this many entries, signing on the writer's own thread beats fanning out.
const PARALLEL_SIGN_MIN: usize = 32;

/// Rounds in a row without another writer before batches are prepared ahead: with two
/// instances writing by turns, a batch prepared ahead is nearly always stale.
const QUIET_ROUNDS_BEFORE_SPECULATING: u32 = 4;

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
    /// Whether anyone else writes to the ledger lately.
    pub others: OtherWriters,
    /// Whether batches may be prepared while the one before commits.
    pub pipeline: bool,
    /// Subscribers whose disclosures each batch records (`live`).
    pub live: Arc<super::live::LiveReaders>,
    /// Committed batches kept for the live feed (`recent`).
    pub recent: Arc<super::recent::Recent>,
}

impl Writer {
    pub(super) async fn run(mut self, mut receiver: mpsc::Receiver<WriterMsg>) {
        let mut shutdown_acks = Vec::new();
        let mut in_flight: Option<InFlight> = None;
        loop {
            let wake = match in_flight.as_mut() {
                None => Wake::Message(receiver.recv().await),
                Some(f) => tokio::select! {
                    landed = &mut f.landing => Wake::Landed(landed),
                    msg = receiver.recv() => Wake::Message(msg),
                },
            };
            let first = match wake {
                Wake::Landed(result) => {
                    if let Some(f) = in_flight.take() {
                        self.conclude(f.carry.head, result).await;
                    }
                    continue;
                }
                Wake::Message(None) => break,
                Wake::Message(Some(msg)) => msg,
            };
            let (batch, solo) = self.gather(first, &mut receiver, &mut shutdown_acks);
            if !batch.is_empty() {
                in_flight = self.start(batch, in_flight.take()).await;
            }
            if let Some(solo) = solo {
                // Runs alone: after the appends queued before it have landed.
                if let Some(f) = in_flight.take() {
                    self.settle(f).await;
                }
                self.run_solo(solo).await;
                self.commits.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        if let Some(f) = in_flight.take() {
            self.settle(f).await;
        }
        for ack in shutdown_acks {
            let _ = ack.send(());
        }
    }

    /// Takes `first` and as many waiting appends as fit in a batch; stops at work that must
    /// run alone.
    fn gather(
        &self,
        first: WriterMsg,
        receiver: &mut mpsc::Receiver<WriterMsg>,
        shutdown_acks: &mut Vec<oneshot::Sender<()>>,
    ) -> (Vec<Pending>, Option<Solo>) {
        let mut batch = Vec::new();
        let mut events = 0;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            let solo = match msg {
                WriterMsg::Append(p) => {
                    events += p.request.events.len();
                    batch.push(p);
                    None
                }
                WriterMsg::Erase(e) => Some(Solo::Erase(e)),
                WriterMsg::Checkpoint(reply) => Some(Solo::Checkpoint(reply)),
                WriterMsg::Rotate(r) => Some(Solo::Rotate(r)),
                WriterMsg::Probe(reply) => Some(Solo::Probe(reply)),
                WriterMsg::Hold(h) => Some(Solo::Hold(h)),
                WriterMsg::Shutdown(ack) => {
                    // Refuse new sends; what is already queued still gets committed.
                    receiver.close();
                    shutdown_acks.push(ack);
                    None
                }
            };
            if solo.is_some() {
                return (batch, solo);
            }
            if events < self.max_batch_events {
                next = receiver.try_recv().ok();
            }
        }
        (batch, None)
    }

    async fn run_solo(&mut self, solo: Solo) {
        match solo {
            Solo::Erase(e) => {
                let result = self.erase(e.request).await;
                let _ = e.reply.send(result);
            }
            Solo::Hold(h) => {
                let result = self.hold(h.request).await;
                let _ = h.reply.send(result);
            }
            Solo::Rotate(r) => {
                let result = self.rotate(r.new_key).await;
                if let Some(reply) = r.reply {
                    let _ = reply.send(result);
                }
            }
            Solo::Probe(reply) => {
                let result = self.probe().await;
                self.record_health("probe", result.as_ref().copied());
                let _ = reply.send(result.is_ok());
            }
            Solo::Checkpoint(reply) => {
                let result = self.checkpoint_now().await;
                self.record_health("checkpoint", result.as_ref().map(|_| ()));
                let result = result.map_err(|e| {
                    tracing::error!(error = %e, "checkpoint rolled back");
                });
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
        }
    }

    /// Starts landing `batch`. With a batch still in flight (`previous`) and no other writer
    /// seen lately, `batch` is prepared (read, sealed, hashed, signed) while `previous`
    /// commits, on top of what `previous` writes; otherwise under the lock once `previous` has
    /// landed.
    async fn start(&mut self, batch: Vec<Pending>, previous: Option<InFlight>) -> Option<InFlight> {
        let (requests, replies): (Vec<Request>, Vec<_>) = batch
            .into_iter()
            .map(|p| ((p.request, p.idempotency), p.reply))
            .unzip();
        if let Some(previous) = previous {
            // Prepared ahead only while `previous` is still landing: once it has landed there is
            // nothing to overlap, and the lock-free read and the check under the lock only add
            // round trips (a single client's appends).
            if self.pipeline && self.others.quiet() && !previous.landing.is_finished() {
                let prepared = self.prepare_speculatively(&requests, &previous.carry).await;
                let landed_as_built = self.settle(previous).await;
                match prepared {
                    Ok(prepared) if landed_as_built => {
                        return Some(self.launch(None, prepared, requests, replies));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "a batch prepared ahead failed; preparing it under the lock");
                    }
                }
            } else {
                self.settle(previous).await;
            }
        }
        self.start_locked(requests, replies).await
    }

    /// Prepares `requests` without the lock, on top of the batch in flight (`carried`).
    async fn prepare_speculatively(
        &self,
        requests: &[Request],
        carried: &Carry,
    ) -> Result<Prepared, WriteError> {
        let mut reads = self.store.begin_snapshot().await?;
        let prepared = self
            .preparer()
            .prepare(reads.as_mut(), carried.head, carried, requests, true)
            .await;
        reads.rollback().await;
        prepared
    }

    /// Prepares `requests` in a write transaction of their own and starts landing them in it.
    async fn start_locked(
        &mut self,
        requests: Vec<Request>,
        replies: Vec<Reply>,
    ) -> Option<InFlight> {
        let mut tx = match self.store.begin_append().await {
            Ok(tx) => tx,
            Err(e) => {
                self.fail(replies, &e.into());
                return None;
            }
        };
        match self.prepare_locked(tx.as_mut(), &requests).await {
            Ok(prepared) => Some(self.launch(Some(tx), prepared, requests, replies)),
            Err(e) => {
                tx.rollback().await;
                self.fail(replies, &e);
                None
            }
        }
    }

    async fn prepare_locked(
        &mut self,
        tx: &mut dyn AppendTx,
        requests: &[Request],
    ) -> Result<Prepared, WriteError> {
        let head = tx.head().await?;
        self.others.saw(head);
        self.ensure_current_key(head.as_ref()).await?;
        self.preparer()
            .prepare(tx, head, &Carry::default(), requests, false)
            .await
    }

    fn preparer(&self) -> Preparer<'_> {
        Preparer {
            ledger_id: self.ledger_id,
            vault: &self.vault,
            index: &self.index,
            signing: &self.signing,
            stats: &self.stats,
            idempotency_window_micros: self.idempotency_window_micros,
            live: &self.live,
        }
    }

    pub(super) fn lander(&self) -> Lander {
        Lander {
            store: Arc::clone(&self.store),
            vault: Arc::clone(&self.vault),
            signing: Arc::clone(&self.signing),
            ledger_id: self.ledger_id,
            checkpoint_every: self.checkpoint_every,
            stats: Arc::clone(&self.stats),
            health: Arc::clone(&self.health),
            published: self.published.clone(),
            commits: Arc::clone(&self.commits),
            recent: Arc::clone(&self.recent),
        }
    }

    /// Lands `prepared` in a task of its own (in `tx` if it was prepared under the lock), which
    /// answers its callers.
    fn launch(
        &self,
        tx: Option<Box<dyn AppendTx>>,
        mut prepared: Prepared,
        requests: Vec<Request>,
        replies: Vec<Reply>,
    ) -> InFlight {
        let carry = std::mem::take(&mut prepared.carry);
        let landing =
            tokio::spawn(
                self.lander()
                    .land(tx, prepared, (requests, replies), self.key_marked),
            );
        InFlight { landing, carry }
    }

    /// Waits for `f` to land; whether it landed as it was built.
    async fn settle(&mut self, f: InFlight) -> bool {
        let result = f.landing.await;
        self.conclude(f.carry.head, result).await
    }

    /// Takes note of a batch's landing; a stale one is prepared and landed again under the
    /// lock, a failed one's callers answered. Whether it landed as it was built.
    async fn conclude(
        &mut self,
        head: Option<ChainHead>,
        result: Result<Landing, tokio::task::JoinError>,
    ) -> bool {
        match result {
            Ok(Landing::Done(wrote)) => {
                self.landed(wrote, head);
                true
            }
            Ok(Landing::Failed(replies, e)) => {
                self.fail(replies, &e);
                false
            }
            Ok(Landing::Stale(requests, replies)) => {
                metrics::counter!(telemetry::STALE_BATCHES).increment(1);
                self.others.moved();
                if let Some(again) = self.start_locked(requests, replies).await {
                    match again.landing.await {
                        Ok(Landing::Done(wrote)) => self.landed(wrote, again.carry.head),
                        Ok(Landing::Failed(replies, e)) => self.fail(replies, &e),
                        Ok(Landing::Stale(_, replies)) => {
                            let e = WriteError::Internal(
                                "a batch prepared under the lock was stale".to_owned(),
                            );
                            self.fail(replies, &e);
                        }
                        Err(e) => lost_landing(&e),
                    }
                }
                false
            }
            Err(e) => {
                lost_landing(&e);
                false
            }
        }
    }

    /// Takes note of a batch that landed, leaving the head at `head` if it `wrote`.
    fn landed(&mut self, wrote: bool, head: Option<ChainHead>) {
        if wrote {
            self.key_marked = true;
            self.others.left(head);
        }
    }

    /// Answers every caller of a batch that was rolled back.
    fn fail(&self, replies: Vec<Reply>, err: &WriteError) {
        self.record_health("append", Err(err));
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
}

impl Writer {
    /// COMMIT of the transaction ending with the entry (`seq`, `hash`) failed: whether it took
    /// effect (see `batch::resolve_lost_commit`).
    pub(super) async fn resolve_lost_commit(
        &self,
        error: StoreError,
        seq: Seq,
        hash: EntryHash,
    ) -> Result<(), WriteError> {
        resolve_lost_commit(self.store.as_ref(), error, seq, hash).await
    }

    /// Inserts records and the tree nodes they complete; signs and inserts a checkpoint if one
    /// is due.
    pub(super) async fn insert_records(
        &self,
        tx: &mut dyn AppendTx,
        head: Option<ChainHead>,
        records: &[Record],
    ) -> Result<Option<Checkpoint>, WriteError> {
        self.lander()
            .insert_records(tx, head, records, self.key_marked)
            .await
    }

    /// Seals, hashes and signs drafts on a blocking thread.
    pub(super) async fn build(
        &self,
        drafts: Vec<Draft>,
        prev_hash: EntryHash,
    ) -> Result<Vec<Record>, WriteError> {
        batch::build(drafts, prev_hash, &self.signing, &self.stats).await
    }
}

/// Whether another writer (another instance on the same database) moves the head lately:
/// preparing a batch ahead pays only while nobody does.
#[derive(Default)]
pub(super) struct OtherWriters {
    /// The head as this writer's last batch left it.
    last_head: Option<ChainHead>,
    /// Batches prepared under the lock in a row that found the head where `last_head` was.
    quiet_rounds: u32,
}

impl OtherWriters {
    /// This writer's batch left the head at `head`.
    fn left(&mut self, head: Option<ChainHead>) {
        self.last_head = head;
    }

    /// The head under the lock, before a batch prepared there.
    fn saw(&mut self, head: Option<ChainHead>) {
        if head == self.last_head {
            self.quiet_rounds = self.quiet_rounds.saturating_add(1);
        } else {
            self.quiet_rounds = 0;
        }
    }

    /// A batch prepared ahead found the head moved.
    fn moved(&mut self) {
        self.quiet_rounds = 0;
    }

    fn quiet(&self) -> bool {
        self.quiet_rounds >= QUIET_ROUNDS_BEFORE_SPECULATING
    }
}

/// A batch landing in a task of its own, and what the next batch may build on meanwhile.
struct InFlight {
    landing: tokio::task::JoinHandle<Landing>,
    carry: Carry,
}

/// What woke the writer.
enum Wake {
    Message(Option<WriterMsg>),
    Landed(Result<Landing, tokio::task::JoinError>),
}

/// A landing task that panicked: its callers' reply slots were dropped with it, so each gets
/// "writer stopped" (`Ledger::append`); whether it committed is for the next batch's head read
/// to find out.
fn lost_landing(e: &tokio::task::JoinError) {
    tracing::error!(error = %e, "a batch's landing task failed");
    metrics::counter!(telemetry::COMMIT_FAILURES).increment(1);
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
        batch::sign_checkpoint(&self.signing, self.ledger_id, tree, last, previous)
    }

    /// Hands a committed checkpoint to the witness publisher.
    pub(super) fn publish(&self, cp: Checkpoint) {
        batch::publish(self.published.as_ref(), cp);
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

/// How long a lost commit's outcome is looked for before it is reported unknown.
const OUTCOME_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the transaction whose last entry is (`seq`, `hash`) was committed: `None` if that
/// cannot be found out within [`OUTCOME_DEADLINE`]. The look-up runs in a write transaction of
/// its own, so it waits for the writer's lock, and thus for the failed transaction to end
/// (PostgreSQL releases its advisory lock only when its session has committed or aborted):
/// what it sees then is final.
pub(super) async fn commit_outcome(store: &dyn Store, seq: Seq, hash: EntryHash) -> Option<bool> {
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
pub(super) fn build_records(
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
