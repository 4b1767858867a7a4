//! The ledger: appends and erasures through the writer task (see `writer`), reads and subject
//! access straight from the store, payloads opened through the vault.

mod batch;
mod cleaner;
pub mod compensation;
mod durable;
mod erasure;
mod erasures;
mod health;
mod holds;
mod idempotency;
pub mod live;
pub mod projector;
mod proofs;
pub mod recent;
mod rotation;
mod schemas;
mod snapshots;
mod system;
mod verified_streams;
mod window;
mod writer;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::checkpoint::Checkpoint;
use crate::crypto::{LedgerSigningKey, SealError, SubjectIndexKey};
use crate::entry::{EntryHash, EventType, LedgerId, Metadata, Seq, StreamId, SubjectHandle};
use crate::receipt::ReceiptJson;
use crate::record::Record;
use crate::store::{ChainHead, EntryRow, MalformedRow, Store, StoreError};
use crate::timefmt::now_micros;
use crate::vault::{Vault, VaultError};
use writer::{Pending, PendingErase, Writer, WriterMsg};

pub use cleaner::{CACHES_CLEARED_WITHIN_MS, FORGET_POLL_INTERVAL, FORGET_QUERY_TIMEOUT};
pub use durable::{DurableError, Polled};
pub use erasure::{ERASURE_STREAM, EraseError, EraseRequest, SUBJECT_ERASED, SYSTEM_STREAM_PREFIX};
pub use erasures::{ErasureState, ErasureStatus, ErasureView};
pub use health::WriteHealth;
pub use holds::{HoldDone, HoldError, HoldRequest};
pub use idempotency::{BadIdempotencyKey, IdempotencyKey, MAX_KEY_CHARS, request_digest};
pub use proofs::{ConsistencyProof, InclusionProof, ProofRequestError, stored_range_hashes};
pub use schemas::{RegisterError, Registered, Types, WriteRefused};
pub use snapshots::{Loaded, SnapshotError};
pub use window::{AsOf, Direction, RowFilter, SeqRange, TimeSeqs, next_cursor, seq_range};

/// Requests waiting for the writer before senders are made to wait.
const QUEUE_REQUESTS: usize = 4096;
/// How often a write is tried while writes fail.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How often expired erasure tombstones are deleted.
const TOMBSTONE_PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// What the caller expects the stream's current version to be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    #[default]
    Any,
    /// The stream must have no events yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    fn admits(self, current: Option<u64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::Exact(v) => current == Some(v),
        }
    }
}

/// One event to append, already validated.
pub struct NewEvent {
    /// Its type.
    pub event_type: EventType,
    /// Its schema version.
    pub schema_version: u32,
    /// The data subject's own identifier, if any; zeroized when dropped, never stored.
    pub subject: Option<Zeroizing<String>>,
    /// The event data as JSON bytes: plaintext, zeroized once sealed.
    pub data: Zeroizing<Vec<u8>>,
    /// Plaintext metadata.
    pub metadata: Metadata,
}

/// An append request: events for one stream, committed together or not at all.
pub struct AppendRequest {
    /// The stream.
    pub stream: StreamId,
    /// The optimistic-concurrency check.
    pub expected: ExpectedVersion,
    /// At least one event.
    pub events: Vec<NewEvent>,
    /// The client's idempotency key, if it sent one.
    pub idempotency: Option<IdempotencyKey>,
}

/// A committed append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Seq of the first event appended.
    pub first_seq: Seq,
    /// Seq of the last event appended.
    pub last_seq: Seq,
    /// The stream's version after the append (that of its last event).
    pub stream_version: u64,
    /// Each appended entry's seq and hash.
    pub entries: Vec<(Seq, EntryHash)>,
    /// Whether this is the original result of an earlier request with the same idempotency
    /// key (nothing was written this time).
    pub replayed: bool,
}

/// What the writer answers an append with.
pub(crate) enum Committed {
    /// Committed now.
    New(Appended),
    /// Its idempotency key was already recorded (by `row`'s append): nothing was written;
    /// the request comes back to be compared with the original.
    Duplicate(crate::store::IdempotencyRow, Box<AppendRequest>),
}

/// Why an append was not committed. In every case nothing of it was written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// The stream's version is not the expected one.
    #[error("stream {stream} is at version {actual:?}, expected {expected:?}")]
    VersionConflict {
        /// The stream.
        stream: StreamId,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's version (`None`: no events).
        actual: Option<u64>,
    },
    /// The database failed; the batch was rolled back.
    #[error("the ledger could not commit: {0}")]
    Unavailable(String),
    /// The commit was sent but its answer lost, and the service could not find out whether
    /// it took effect: the append may or may not be in the ledger.
    #[error("the outcome of the commit is unknown")]
    OutcomeUnknown,
    /// The idempotency key was recorded for a different request.
    #[error("the idempotency key was used for a different request")]
    IdempotencyKeyReused,
    /// The service is shutting down and takes no new appends.
    #[error("the ledger is shutting down")]
    ShuttingDown,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A row does not decode.
    #[error(transparent)]
    Malformed(#[from] MalformedRow),
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A payload, or the key it is sealed under, is missing, and no erasure explains it: the
    /// ledger was tampered with (nothing purges payloads; keys go only with an erasure).
    #[error("the entry at seq {seq} is missing its {what}, and no erasure explains it")]
    MissingData {
        /// Where.
        seq: Seq,
        /// `payload` or `data key`.
        what: &'static str,
    },
    /// A payload does not open under its key with its header: it was changed or moved.
    #[error("payload of the entry at seq {seq} fails authentication: {reason}")]
    Tampered {
        /// Where.
        seq: Seq,
        /// What the sealing layer said.
        reason: SealError,
    },
    /// The thread that opened payloads failed.
    #[error("opening payloads failed: {0}")]
    Task(String),
}

/// An entry read back, with its payload opened when its key still exists.
#[derive(Debug)]
pub struct ReadEvent {
    /// The stored record.
    pub record: Record,
    /// The decrypted event data, or `None` if erased.
    pub data: Option<serde_json::Value>,
    /// Whether the data's key has been destroyed (or the payload purged).
    pub erased: bool,
}

/// Cumulative time the writer spent in each stage, for the benchmark.
#[derive(Debug, Default)]
pub struct StageStats {
    /// Entries committed.
    pub entries: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Nanoseconds sealing payloads.
    pub seal_ns: AtomicU64,
    /// Nanoseconds hashing the chain.
    pub hash_ns: AtomicU64,
    /// Nanoseconds signing.
    pub sign_ns: AtomicU64,
    /// Nanoseconds inserting rows and committing (including the fsync).
    pub insert_ns: AtomicU64,
}

/// Settings of the ledger.
#[derive(Clone, Copy, Debug)]
pub struct LedgerConfig {
    /// Most events in one commit.
    pub max_batch_events: usize,
    /// Whether the next batch is prepared while the one before commits (`ledger::batch`);
    /// off only to measure what it gains.
    pub pipeline: bool,
    /// How long an erasure receipt stays retrievable by identifier (0: not at all).
    pub tombstone_ttl: Duration,
    /// A checkpoint is made in the commit that brings the log this many entries past the last.
    pub checkpoint_every: u64,
    /// A checkpoint is also made this often if the log grew.
    pub checkpoint_interval: Duration,
    /// KEK epochs: their length and the re-wrap batch.
    pub rotation: crate::epochs::rotation::RotationConfig,
    /// How long idempotency keys are kept.
    pub idempotency_window: Duration,
}

/// The key that signs now, and the first position it signs (for the range of what it signs).
#[derive(Debug)]
pub struct ActiveKey {
    /// The key.
    pub key: Arc<LedgerSigningKey>,
    /// The first seq it signs (its rotation's seq + 1, or 0 for the ledger's first key).
    pub first_seq: u64,
}

/// The active signing key, shared between the writer (which replaces it on rotation) and the
/// readers that sign reports.
#[derive(Debug)]
pub struct SigningCell(std::sync::RwLock<Arc<ActiveKey>>);

impl SigningCell {
    /// A cell holding `active`.
    #[must_use]
    pub fn new(active: ActiveKey) -> SigningCell {
        SigningCell(std::sync::RwLock::new(Arc::new(active)))
    }

    /// The key that signs now.
    #[must_use]
    pub fn current(&self) -> Arc<ActiveKey> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn replace(&self, active: ActiveKey) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(active);
    }
}

/// The keys the ledger signs and indexes with.
pub struct LedgerKeys {
    /// The ledger's identity (from the keys directory).
    pub ledger_id: LedgerId,
    /// The key that signs entries, checkpoints and receipts (replaced on rotation).
    pub signing: Arc<SigningCell>,
    /// The keys directory: where a new signing key waits to be rotated in.
    pub keys_dir: Option<std::path::PathBuf>,
    /// Keys the subject index.
    pub index: Arc<SubjectIndexKey>,
}

/// The ledger: appends through the writer task, reads straight from the store.
pub struct Ledger {
    id: LedgerId,
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    signing: Arc<SigningCell>,
    index: Arc<SubjectIndexKey>,
    sender: mpsc::Sender<WriterMsg>,
    writer: Mutex<Option<JoinHandle<()>>>,
    purger: JoinHandle<()>,
    ticker: JoinHandle<()>,
    rotator: Option<JoinHandle<()>>,
    epochs: Option<JoinHandle<()>>,
    stats: Arc<StageStats>,
    /// Woken after each erasure: cleans the live files outside the writer (see `cleaner`).
    cleanup: Arc<Notify>,
    /// The cleaner, the erased-key watcher, the write prober and the idempotency-key purger.
    background: Mutex<Vec<JoinHandle<()>>>,
    /// Whether the last write succeeded.
    health: Arc<WriteHealth>,
    /// How long idempotency keys hold, in microseconds.
    idempotency_window_micros: i64,
    /// Changes after every commit of this instance, and of others when the backend announces
    /// them (PostgreSQL): what subscribers wait on.
    commits: Arc<tokio::sync::watch::Sender<u64>>,
    /// Registered event versions, as this instance knows them.
    schemas: Mutex<schemas::Registry>,
    /// The subjects of streams whose entries a snapshot's PUT has verified, as far as verified.
    verified_streams: verified_streams::VerifiedStreams,
    /// Subscribers whose disclosures the writer records with the events (`live`).
    live: Arc<live::LiveReaders>,
    recent: Arc<recent::Recent>,
}

/// Asks the writer for a checkpoint every `interval` (it makes one if the log grew).
async fn tick_checkpoints(sender: mpsc::Sender<WriterMsg>, interval: Duration) {
    let mut every = tokio::time::interval(interval);
    every.tick().await;
    loop {
        every.tick().await;
        if sender.send(WriterMsg::Checkpoint(None)).await.is_err() {
            return;
        }
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ledger({:?})", self.signing.current().key)
    }
}

impl Ledger {
    /// Starts the writer task, the tombstone purger, the cleaner of the live files after
    /// erasures and the watcher that drops keys other instances erase.
    #[must_use]
    pub fn start(
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
        keys: LedgerKeys,
        config: LedgerConfig,
        publisher: Option<mpsc::UnboundedSender<Checkpoint>>,
    ) -> Ledger {
        let (sender, receiver) = mpsc::channel(QUEUE_REQUESTS);
        let signing = Arc::clone(&keys.signing);
        let stats = Arc::new(StageStats::default());
        let health = Arc::new(WriteHealth::default());
        let idempotency_window_micros =
            i64::try_from(config.idempotency_window.as_micros()).unwrap_or(i64::MAX);
        let commits = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let live = Arc::new(live::LiveReaders::default());
        // Another instance's erasure reaches this one's key cache only within a bound, while a
        // row read back carries it at once: the feed opens this instance's batches from memory
        // only where no other process writes.
        let recent = Arc::new(recent::Recent::new(!store.shared()));
        let writer = Writer {
            ledger_id: keys.ledger_id,
            store: Arc::clone(&store),
            vault: Arc::clone(&vault),
            signing: Arc::clone(&signing.current().key),
            cell: Arc::clone(&signing),
            keys_dir: keys.keys_dir.clone(),
            index: Arc::clone(&keys.index),
            max_batch_events: config.max_batch_events.max(1),
            tombstone_ttl_micros: i64::try_from(config.tombstone_ttl.as_micros())
                .unwrap_or(i64::MAX),
            checkpoint_every: config.checkpoint_every.max(1),
            key_marked: false,
            stats: Arc::clone(&stats),
            published: publisher,
            health: Arc::clone(&health),
            idempotency_window_micros,
            commits: Arc::clone(&commits),
            others: writer::OtherWriters::default(),
            pipeline: config.pipeline,
            live: Arc::clone(&live),
            recent: Arc::clone(&recent),
        };
        let handle = tokio::spawn(writer.run(receiver));
        let ticker = tokio::spawn(tick_checkpoints(
            sender.clone(),
            config.checkpoint_interval.max(Duration::from_millis(100)),
        ));
        let rotator = keys.keys_dir.clone().map(|dir| {
            let sender = sender.clone();
            let cell = Arc::clone(&signing);
            tokio::spawn(watch_for_rotation(dir, sender, cell))
        });
        let epochs = keys.keys_dir.clone().map(|dir| {
            tokio::spawn(crate::epochs::rotation::run(
                crate::epochs::rotation::Rotator::new(
                    Arc::clone(&store),
                    Arc::clone(&vault),
                    dir,
                    config.rotation,
                )
                .paced(),
            ))
        });
        let purger = tokio::spawn(purge_tombstones(Arc::clone(&store), Arc::clone(&vault)));
        let cleanup = Arc::new(Notify::new());
        let background = vec![
            tokio::spawn(cleaner::clean_after_erasures(
                Arc::clone(&store),
                Arc::clone(&cleanup),
            )),
            tokio::spawn(cleaner::forget_erased_keys(
                Arc::clone(&store),
                Arc::clone(&vault),
            )),
            tokio::spawn(probe_while_failing(Arc::clone(&health), sender.clone())),
            tokio::spawn(projector::run(Arc::clone(&store), commits.subscribe())),
            tokio::spawn(relay_commit_notices(
                Arc::clone(&store),
                Arc::clone(&commits),
            )),
            tokio::spawn(purge_idempotency_keys(
                Arc::clone(&store),
                config.idempotency_window,
            )),
            tokio::spawn(checkpoint_wal(Arc::clone(&store), commits.subscribe())),
        ];
        Ledger {
            id: keys.ledger_id,
            store,
            vault,
            signing,
            index: keys.index,
            sender,
            writer: Mutex::new(Some(handle)),
            purger,
            ticker,
            rotator,
            epochs,
            stats,
            cleanup,
            background: Mutex::new(background),
            health,
            idempotency_window_micros,
            commits,
            schemas: Mutex::new(schemas::Registry::default()),
            verified_streams: verified_streams::VerifiedStreams::default(),
            live,
            recent,
        }
    }

    /// Batches this process has just committed, for the live feed.
    #[must_use]
    pub fn recent(&self) -> &recent::Recent {
        &self.recent
    }

    /// Subscribers whose disclosures the writer records with the events they disclose.
    #[must_use]
    pub fn live_readers(&self) -> &Arc<live::LiveReaders> {
        &self.live
    }

    /// A receiver that changes after every commit (see the field).
    #[must_use]
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Hands signing over to `new_key` (a rotation entry signed by the current key and
    /// countersigned by the new one); returns the rotation entry's seq.
    pub async fn rotate_signing_key(&self, new_key: LedgerSigningKey) -> Result<Seq, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(WriterMsg::Rotate(Box::new(rotation::PendingRotate {
                new_key,
                reply: Some(reply),
            })))
            .await
            .map_err(|_| AppendError::ShuttingDown)?;
        answer
            .await
            .unwrap_or_else(|_| Err(AppendError::Unavailable("writer stopped".to_owned())))
    }

    /// Makes a checkpoint of the current head if the log grew since the last one; returns the
    /// newest checkpoint (`None` while the log is empty).
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(WriterMsg::Checkpoint(Some(reply)))
            .await
            .map_err(|_| AppendError::ShuttingDown)?;
        answer
            .await
            .unwrap_or(Err(()))
            .map_err(|()| AppendError::Unavailable("checkpoint failed".to_owned()))
    }

    /// Appends events; returns once they are durably committed. With an idempotency key
    /// already recorded, returns the original result (or `IdempotencyKeyReused`) instead.
    pub async fn append(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        let idempotency = request.idempotency.map(|key| writer::IdempotencyTag {
            key_hash: key.hash(),
            digest: request_digest(&request),
        });
        if let Some(tag) = &idempotency {
            let not_before = now_micros().saturating_sub(self.idempotency_window_micros);
            let recorded = self
                .store
                .idempotency(&tag.key_hash, not_before)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "could not look up an idempotency key");
                    AppendError::Unavailable("could not look up the idempotency key".to_owned())
                })?;
            if let Some(row) = recorded {
                return self.replay(&row, &request).await.map(replayed);
            }
        }
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(WriterMsg::Append(Pending {
                request,
                idempotency,
                reply,
            }))
            .await
            .map_err(|_| AppendError::ShuttingDown)?;
        // A dropped reply means the writer died before answering: nothing was acknowledged.
        match answer.await {
            Ok(Ok(Committed::New(appended))) => Ok(appended),
            Ok(Ok(Committed::Duplicate(row, request))) => {
                self.replay(&row, &request).await.map(replayed)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(AppendError::Unavailable("writer stopped".to_owned())),
        }
    }

    /// Why the service cannot write now, if it cannot (a failed write not yet followed by a
    /// successful one).
    #[must_use]
    pub fn write_failure(&self) -> Option<String> {
        self.health.failure()
    }

    /// Erases a subject: destroys its key, appends a `SubjectErased` entry, returns the signed
    /// receipt. A repeated request within the tombstone window returns the first receipt.
    pub async fn erase(&self, request: EraseRequest) -> Result<ReceiptJson, EraseError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(WriterMsg::Erase(PendingErase { request, reply }))
            .await
            .map_err(|_| EraseError::ShuttingDown)?;
        let receipt = answer.await.unwrap_or(Err(EraseError::Unavailable))?;
        // Cleaning the live files is the cleaner's, never the writer's: appends do not wait.
        self.cleanup.notify_one();
        Ok(receipt)
    }

    /// Subject access: up to `limit` of the subject's events from `from`, decrypted, in seq
    /// order. `None` if no live subject has this identifier.
    pub async fn export_subject(
        &self,
        identifier: &str,
        from: Seq,
        limit: u32,
    ) -> Result<Option<(SubjectHandle, Vec<ReadEvent>)>, ReadError> {
        let mac = self.index.index(identifier);
        let Some(handle) = self.vault.subject(&mac).await? else {
            return Ok(None);
        };
        let rows = self.store.read_subject(&handle, from, limit).await?;
        Ok(Some((handle, self.open_rows(rows).await?)))
    }

    /// Stops taking appends, commits everything already queued, and waits for the writer.
    pub async fn shutdown(&self) {
        self.purger.abort();
        self.ticker.abort();
        if let Some(r) = &self.rotator {
            r.abort();
        }
        if let Some(r) = &self.epochs {
            r.abort();
        }
        for task in self.background.lock().await.drain(..) {
            task.abort();
            // Wait for the abort, so that no connection is still in use when the store closes.
            let _ = task.await;
        }
        let (ack, done) = oneshot::channel();
        if self.sender.send(WriterMsg::Shutdown(ack)).await.is_ok() {
            let _ = done.await;
        }
        if let Some(handle) = self.writer.lock().await.take() {
            let _ = handle.await;
        }
    }

    /// Whether the writer task is alive and taking appends.
    #[must_use]
    pub fn is_writable(&self) -> bool {
        !self.sender.is_closed()
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The key vault (its cache, for tests and diagnostics).
    #[must_use]
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// The ledger's identity.
    #[must_use]
    pub fn ledger_id(&self) -> LedgerId {
        self.id
    }

    /// The signing key that signs now, with the first position it signs.
    #[must_use]
    pub fn signing_key(&self) -> Arc<ActiveKey> {
        self.signing.current()
    }

    /// Stage timings.
    #[must_use]
    pub fn stats(&self) -> &StageStats {
        &self.stats
    }

    /// The last entry, if any.
    pub async fn head(&self) -> Result<Option<ChainHead>, StoreError> {
        self.store.head().await
    }

    /// Up to `limit` events of the global log from `from`.
    pub async fn read_global(&self, from: Seq, limit: u32) -> Result<Vec<ReadEvent>, ReadError> {
        let rows = self.store.read_global(from, None, limit).await?;
        self.open_rows(rows).await
    }

    /// Up to `limit` rows of the global log from `from`, not yet opened ([`Ledger::open_rows`]).
    pub async fn global_rows(&self, from: Seq, limit: u32) -> Result<Vec<EntryRow>, ReadError> {
        Ok(self.store.read_global(from, None, limit).await?)
    }

    /// The seqs a read with `as_of` and `[from_time, to_time)` may return: the times are
    /// looked up in the log, the rule is `window::seq_range`.
    pub async fn read_range(
        &self,
        as_of: Option<AsOf>,
        from_time: Option<i64>,
        to_time: Option<i64>,
    ) -> Result<SeqRange, ReadError> {
        let at = |t: i64| self.store.seq_recorded_from(t);
        let times = TimeSeqs {
            // As of TIME includes what was recorded at TIME: the first seq after it.
            as_of: match as_of {
                Some(AsOf::Time(t)) => Some(at(t.saturating_add(1)).await?),
                _ => None,
            },
            from_time: match from_time {
                Some(t) => Some(at(t).await?),
                None => None,
            },
            to_time: match to_time {
                Some(t) => Some(at(t).await?),
                None => None,
            },
        };
        Ok(seq_range(as_of, times))
    }

    /// The events of `stream` from seq `from` on that compensate another, with what they
    /// compensate, in seq order (their metadata only; nothing is decrypted).
    pub async fn compensations(
        &self,
        stream: &StreamId,
        from: Seq,
    ) -> Result<Vec<(Seq, compensation::Compensation)>, ReadError> {
        Ok(self
            .store
            .compensating(stream, from)
            .await?
            .into_iter()
            .filter_map(|(seq, metadata)| {
                let m: std::collections::BTreeMap<String, String> =
                    serde_json::from_str(&metadata).ok()?;
                compensation::Compensation::read(&m).map(|c| (seq, c))
            })
            .collect())
    }

    /// The rows `filter` admits, not yet opened.
    pub async fn filtered_rows(&self, filter: &RowFilter) -> Result<Vec<EntryRow>, ReadError> {
        if filter.seqs.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.store.read_filtered(filter).await?)
    }

    /// Up to `limit` rows of one stream from `from_version`, not yet opened.
    pub async fn stream_rows(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: u32,
    ) -> Result<Vec<EntryRow>, ReadError> {
        Ok(self.store.read_stream(stream, from_version, limit).await?)
    }

    /// Up to `limit` events of one stream from `from_version`.
    pub async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: u32,
    ) -> Result<Vec<ReadEvent>, ReadError> {
        let rows = self.store.read_stream(stream, from_version, limit).await?;
        self.open_rows(rows).await
    }

    /// Decodes rows and opens their payloads (erased ones read as erased).
    pub async fn open_rows(&self, rows: Vec<EntryRow>) -> Result<Vec<ReadEvent>, ReadError> {
        let mut records = Vec::with_capacity(rows.len());
        let mut stopped: Option<ReadError> = None;
        for row in rows {
            match row.into_marked_record() {
                Ok(marked) => records.push(marked),
                Err(e) => {
                    stopped = Some(e.into());
                    break;
                }
            }
        }
        let opened = self.open_records(records).await;
        match (opened, stopped) {
            (Ok(_), Some(e)) | (Err(e), _) => Err(e),
            (Ok(opened), None) => Ok(opened),
        }
    }

    /// [`Ledger::open_rows`] for decoded rows, each with whether the database marks it erased
    /// (`false` for a batch this process has just committed: the vault's answer for its key
    /// then decides, as it does for a row read before its subject's erasure committed).
    ///
    /// # Errors
    /// As [`Ledger::open_rows`].
    pub async fn open_records(
        &self,
        records: Vec<(Record, bool)>,
    ) -> Result<Vec<ReadEvent>, ReadError> {
        // First, in order, each row's key (the vault may have to unwrap it); then the payloads
        // are opened, on every core when there are many. The first error in row order wins, as
        // if the rows were opened one by one.
        let mut keyed = Vec::with_capacity(records.len());
        let mut stopped = None;
        for (record, erased) in records {
            match self.key_for(record, erased).await {
                Ok(k) => keyed.push(k),
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            }
        }
        let opened = if keyed.len() >= PARALLEL_OPEN_ROWS {
            tokio::task::spawn_blocking(move || {
                use rayon::prelude::*;
                keyed.into_par_iter().map(Keyed::open).collect::<Vec<_>>()
            })
            .await
            .map_err(|e| ReadError::Task(e.to_string()))?
        } else {
            keyed.into_iter().map(Keyed::open).collect()
        };
        let mut out = Vec::with_capacity(opened.len());
        for event in opened {
            out.push(event?);
        }
        match stopped {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// A decoded row (`erased`: as the database marks it), with the key that opens its
    /// payload (`None`: it reads as erased).
    async fn key_for(&self, record: Record, erased: bool) -> Result<Keyed, ReadError> {
        // A subject erased by any instance reads as erased here too, whatever this process's
        // key cache still holds; the erasure entry itself stays readable.
        if erased && record.entry.header.stream_id.as_str() != ERASURE_STREAM {
            return Ok(Keyed { record, key: None });
        }
        // Its subject's erasure (as the database records it) is the only reason a payload may
        // not open: a payload or key missing otherwise is tampering, reported as an error
        // naming the seq, never as `erased: true`.
        let seq = record.entry.header.seq;
        let Some(payload) = &record.payload else {
            return Err(missing(seq, "payload"));
        };
        let key_ref = payload
            .key_ref()
            .map_err(|reason| ReadError::Tampered { seq, reason })?;
        match self.vault.key(&key_ref).await? {
            Some(key) => Ok(Keyed {
                record,
                key: Some(key),
            }),
            None => {
                if self.erased_now(seq, &key_ref).await? {
                    Ok(Keyed { record, key: None })
                } else {
                    Err(missing(seq, "data key"))
                }
            }
        }
    }

    /// Whether the entry at `seq`, whose key the vault no longer has, was erased meanwhile (an
    /// erasure may have committed since its row was read: ask the database again).
    async fn erased_now(
        &self,
        seq: Seq,
        key_ref: &crate::crypto::KeyRef,
    ) -> Result<bool, ReadError> {
        let erased_now = self
            .store
            .read_global(seq, Some(seq), 1)
            .await?
            .first()
            .is_some_and(EntryRow::erased);
        Ok(erased_now && matches!(key_ref, crate::crypto::KeyRef::Subject(_)))
    }
}

/// Rows opened on a blocking thread, spread over every core, from this many on. Fewer are
/// opened in place (well under a millisecond for 500 ~1 KB events): the hand-over to the pool,
/// which the writer's signing keeps busy under appends, would cost the live feed more in
/// waiting than it saves (measured: live delivery p50 and p99 fell by about half with the
/// threshold at 512 instead of 64).
const PARALLEL_OPEN_ROWS: usize = 512;

/// A decoded row and the key that opens it; `None`: it reads as erased.
struct Keyed {
    record: Record,
    key: Option<Arc<crate::crypto::DataKey>>,
}

impl Keyed {
    /// Opens the payload and parses its data.
    fn open(self) -> Result<ReadEvent, ReadError> {
        let Keyed { record, key } = self;
        let Some(key) = key else {
            return Ok(ReadEvent {
                record,
                data: None,
                erased: true,
            });
        };
        let seq = record.entry.header.seq;
        let Some(payload) = &record.payload else {
            return Err(missing(seq, "payload"));
        };
        let plain = crate::crypto::open(&key, payload, &record.entry.header.payload_aad())
            .map_err(|reason| ReadError::Tampered { seq, reason })?;
        let data = serde_json::from_slice(&plain).map_err(|_| ReadError::Tampered {
            seq,
            reason: SealError::Malformed,
        })?;
        Ok(ReadEvent {
            record,
            data: Some(data),
            erased: false,
        })
    }
}

/// Deletes expired erasure tombstones now and then.
async fn purge_tombstones(store: Arc<dyn Store>, vault: Arc<Vault>) {
    let mut every = tokio::time::interval(TOMBSTONE_PURGE_INTERVAL);
    loop {
        every.tick().await;
        match erasure::purge_tombstones(store.as_ref(), &vault, now_micros()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "expired erasure tombstones deleted"),
            Err(e) => tracing::warn!(error = %e, "could not delete expired tombstones"),
        }
    }
}

/// While writes fail, asks the writer every second for a small write, so that the service
/// finds out by itself when the cause has gone (space freed, the database back).
async fn probe_while_failing(health: Arc<WriteHealth>, sender: mpsc::Sender<WriterMsg>) {
    let mut every = tokio::time::interval(PROBE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if health.failure().is_none() {
            continue;
        }
        let (reply, answer) = oneshot::channel();
        if sender.send(WriterMsg::Probe(reply)).await.is_err() {
            return;
        }
        let _ = answer.await;
    }
}

/// Shortest time between two background WAL checkpoints: each copies what the commits since
/// the one before wrote (a few MB at most at full append speed) and fsyncs the database file.
const WAL_CHECKPOINT_PAUSE: Duration = Duration::from_millis(250);

/// Checkpoints the WAL at least this often, commits or not (the read models, durable
/// subscriptions and purges write outside the ledger's commits).
const WAL_CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Takes the WAL's checkpoints off the writer's path (`Store::checkpoint_in_background`) and
/// makes them: after commits, at most once per [`WAL_CHECKPOINT_PAUSE`], and at least once per
/// [`WAL_CHECKPOINT_EVERY`].
async fn checkpoint_wal(store: Arc<dyn Store>, mut commits: tokio::sync::watch::Receiver<u64>) {
    // Until this succeeds the writer's commits checkpoint, as SQLite does by default.
    while let Err(e) = store.checkpoint_in_background().await {
        tracing::warn!(error = %e, "could not take the write-ahead log's checkpoints over");
        tokio::time::sleep(WAL_CHECKPOINT_EVERY).await;
    }
    loop {
        tokio::select! {
            changed = commits.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(WAL_CHECKPOINT_EVERY) => {}
        }
        if let Err(e) = store.checkpoint_wal().await {
            tracing::warn!(error = %e, "could not checkpoint the write-ahead log");
        }
        tokio::time::sleep(WAL_CHECKPOINT_PAUSE).await;
    }
}

/// Deletes idempotency keys older than the window, a few times per window.
async fn purge_idempotency_keys(store: Arc<dyn Store>, window: Duration) {
    let period = (window / 4).clamp(Duration::from_secs(1), TOMBSTONE_PURGE_INTERVAL);
    let window_micros = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match store
            .purge_idempotency(now_micros().saturating_sub(window_micros))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(count = n, "expired idempotency keys deleted"),
            Err(e) => tracing::warn!(error = %e, "could not delete expired idempotency keys"),
        }
    }
}

fn replayed(appended: Appended) -> Appended {
    metrics::counter!(crate::telemetry::IDEMPOTENT_REPLAYS).increment(1);
    Appended {
        replayed: true,
        ..appended
    }
}

fn missing(seq: Seq, what: &'static str) -> ReadError {
    tracing::error!(
        seq = seq.0,
        what,
        "an entry's {what} is missing and no erasure explains it: the ledger was tampered with"
    );
    ReadError::MissingData { seq, what }
}

/// How often the keys directory is checked for a signing key waiting to be rotated in.
const ROTATION_POLL: Duration = Duration::from_millis(500);

/// Hands a signing key that `rotate-signing-key` left in the keys directory to the writer.
async fn watch_for_rotation(
    dir: std::path::PathBuf,
    sender: mpsc::Sender<WriterMsg>,
    cell: Arc<SigningCell>,
) {
    let mut every = tokio::time::interval(ROTATION_POLL);
    loop {
        every.tick().await;
        let next = match crate::keyfiles::read_next_signing_key(&dir) {
            Ok(Some(k)) => k,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the signing key waiting to be rotated in");
                continue;
            }
        };
        if next.key_id() == cell.current().key.key_id() {
            continue;
        }
        let (reply, answer) = oneshot::channel();
        let msg = WriterMsg::Rotate(Box::new(rotation::PendingRotate {
            new_key: next,
            reply: Some(reply),
        }));
        if sender.send(msg).await.is_err() {
            return;
        }
        // One rotation at a time; a failed one is retried at the next tick.
        let _ = answer.await;
    }
}

/// Rows read per query while rebuilding the tree.
const REBUILD_CHUNK_ROWS: u32 = 10_000;

/// Makes sure every perfect subtree of the log is stored (a ledger written before the tree
/// existed, or restored without it); returns how many entries were rehashed, if any.
pub async fn rebuild_tree_if_needed(store: &dyn Store) -> Result<Option<u64>, StoreError> {
    let Some(head) = store.head().await? else {
        return Ok(None);
    };
    let size = head.seq.0 + 1;
    let needed: Vec<_> = crate::merkle::decompose(0, size)
        .into_iter()
        .filter(|id| id.level > 0)
        .collect();
    if store.merkle_nodes(&needed).await?.len() == needed.len() {
        return Ok(None);
    }
    let mut tree = crate::merkle::CompactRange::new();
    let mut from = Seq(0);
    while from.0 < size {
        let rows = store
            .read_global(from, Some(head.seq), REBUILD_CHUNK_ROWS)
            .await?;
        if rows.is_empty() {
            break;
        }
        let records = rows
            .into_iter()
            .map(EntryRow::into_record)
            .collect::<Result<Vec<_>, _>>()?;
        from = records.last().map_or(from, |r| r.entry.header.seq.next());
        store
            .insert_merkle_nodes(&writer::extend_tree(&mut tree, &records))
            .await?;
    }
    Ok(Some(tree.size()))
}

/// Relays other instances' commit notices (PostgreSQL) to this instance's subscribers.
async fn relay_commit_notices(
    store: Arc<dyn Store>,
    commits: Arc<tokio::sync::watch::Sender<u64>>,
) {
    loop {
        match store.append_notices().await {
            Ok(None) => return,
            Ok(Some(mut notices)) => {
                while notices.next().await.is_ok() {
                    commits.send_modify(|n| *n = n.wrapping_add(1));
                }
                tracing::warn!("lost the commit notice connection; subscribers poll meanwhile");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for commit notices; subscribers poll meanwhile");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
