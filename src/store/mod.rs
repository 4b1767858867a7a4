//! Storage: the [`Store`] trait the rest of the service talks to, and one implementation per
//! backend. Only this module knows SQL.

pub mod access;
mod epochs;
mod postgres;
pub mod projections;
pub mod snapshots;
mod sqlite;
pub mod subscriptions;
mod tx;

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;

use crate::checkpoint::Checkpoint;
use crate::crypto::{KekId, KeyId, KeyRef, PublicKey, SealedPayload, Signature, WrappedKey};
use crate::entry::{
    Entry, EntryHash, EntryHeader, EventType, LedgerId, Metadata, PayloadDigest, Seq, StreamId,
    SubjectHandle,
};
use crate::ledger::RowFilter;
use crate::merkle::{MerkleHash, NodeId};
use crate::projections::Counted;
use crate::record::Record;

pub use access::{AccessStore, HoldRow, TokenRow};
pub use epochs::{EpochRow, EpochStore, ErasureRecord, ErasureRow, LinkRow};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub(crate) use tx::TxConn;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A row that does not decode (tampered or corrupt).
    #[error(transparent)]
    Malformed(#[from] MalformedRow),
    /// A unique key refused an insert: another writer took the same position.
    #[error("conflicting write: {0}")]
    Conflict(String),
}

/// A stored row that does not decode into a record: evidence of tampering or corruption.
#[derive(Debug, Clone, thiserror::Error)]
#[error("row at seq {seq} is malformed: {what}")]
pub struct MalformedRow {
    /// The row's seq column.
    pub seq: Seq,
    /// Which field is wrong.
    pub what: String,
}

/// The last entry of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainHead {
    /// Its seq.
    pub seq: Seq,
    /// Its hash, which the next entry links to.
    pub entry_hash: EntryHash,
    /// Its time, which the next entry's time must not precede.
    pub recorded_at_micros: i64,
    /// The key that signed it.
    pub key_id: KeyId,
    /// The key its rotation entry hands over to, if it is one (from its metadata).
    pub rotated_to: Option<KeyId>,
}

impl ChainHead {
    /// The key that signs the entry after this one.
    #[must_use]
    pub fn next_key(&self) -> KeyId {
        self.rotated_to.unwrap_or(self.key_id)
    }
}

/// An `erased_subjects` row's seq and handle.
pub(crate) fn erasure_row(seq: i64, handle: &[u8]) -> Result<(Seq, SubjectHandle), StoreError> {
    let seq = Seq(to_u64(seq));
    SubjectHandle::from_slice(handle)
        .map(|h| (seq, h))
        .map_err(|_| malformed(seq, "erased_subjects.handle"))
}

/// Decodes a head row's columns.
pub(crate) fn chain_head(
    seq: i64,
    entry_hash: &[u8],
    recorded_at_micros: i64,
    key_id: &str,
    stream_id: &str,
    event_type: &str,
    metadata: &str,
) -> Result<ChainHead, StoreError> {
    let seq = Seq(to_u64(seq));
    let entry_hash = EntryHash::from_slice(entry_hash).map_err(|_| malformed(seq, "entry_hash"))?;
    let key_id = KeyId::from_hex(key_id).map_err(|_| malformed(seq, "key_id"))?;
    let rotated_to = if stream_id == crate::rotation::KEYS_STREAM
        && event_type == crate::rotation::SIGNING_KEY_ROTATED
    {
        let meta: Metadata =
            serde_json::from_str(metadata).map_err(|_| malformed(seq, "metadata"))?;
        let rotation = crate::rotation::Rotation::from_metadata(&meta)
            .map_err(|_| malformed(seq, "metadata"))?;
        Some(rotation.new_key.key_id())
    } else {
        None
    };
    Ok(ChainHead {
        seq,
        entry_hash,
        recorded_at_micros,
        key_id,
        rotated_to,
    })
}

/// The columns a head read selects, in `chain_head` order.
pub(crate) const HEAD_SELECT: &str = "SELECT seq, entry_hash, recorded_at, key_id, stream_id, \
    event_type, metadata FROM entries ORDER BY seq DESC LIMIT 1";

/// A wrapped data key as kept in the vault.
#[derive(Clone, Debug)]
pub struct VaultRow {
    /// Which key.
    pub key_ref: KeyRef,
    /// The key, wrapped under a KEK.
    pub wrapped: WrappedKey,
    /// Which KEK.
    pub kek_id: String,
}

/// A published signing key.
#[derive(Clone, Debug)]
pub struct SigningKeyRow {
    /// Its id.
    pub key_id: KeyId,
    /// The public key.
    pub public_key: PublicKey,
    /// The first entry it signed, if any.
    pub first_seq: Option<Seq>,
    /// The rotation entry that retired it, if it is retired.
    pub last_seq: Option<Seq>,
}

/// Raw column values of one `entries` row, before decoding.
#[derive(Debug)]
pub struct EntryRow {
    seq: i64,
    stream_id: String,
    stream_version: i64,
    event_type: String,
    schema_version: i64,
    subject: Option<Vec<u8>>,
    recorded_at: i64,
    metadata: String,
    payload: Option<Vec<u8>>,
    payload_digest: Vec<u8>,
    prev_hash: Vec<u8>,
    entry_hash: Vec<u8>,
    signature: Vec<u8>,
    key_id: String,
    ledger_id: Option<Vec<u8>>,
    erased: bool,
}

/// Decodes rows by column name, on either backend (by hand rather than with sqlx's derive,
/// which would compile sqlx and SQLite a second time, for the macro).
macro_rules! from_row {
    ($ty:ident { $($field:ident: $t:ty),* $(,)? }) => {
        impl<'r, R> sqlx::FromRow<'r, R> for $ty
        where
            R: sqlx::Row,
            &'static str: sqlx::ColumnIndex<R>,
            $($t: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,)*
        {
            fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
                Ok($ty { $($field: row.try_get(stringify!($field))?,)* })
            }
        }
    };
}
pub(crate) use from_row;

from_row!(EntryRow {
    seq: i64,
    stream_id: String,
    stream_version: i64,
    event_type: String,
    schema_version: i64,
    subject: Option<Vec<u8>>,
    recorded_at: i64,
    metadata: String,
    payload: Option<Vec<u8>>,
    payload_digest: Vec<u8>,
    prev_hash: Vec<u8>,
    entry_hash: Vec<u8>,
    signature: Vec<u8>,
    key_id: String,
    ledger_id: Option<Vec<u8>>,
    erased: bool,
});

from_row!(CheckpointRow {
    tree_size: i64,
    root_hash: Vec<u8>,
    last_entry_hash: Vec<u8>,
    timestamp: i64,
    key_id: String,
    signature: Vec<u8>,
    ledger_id: Option<Vec<u8>>,
    previous_tree_size: Option<i64>,
});

/// Migrations compiled into the binary: `(version, description, SQL)`, as sqlx's `migrate!`
/// would embed them (same checksums, so databases migrated by earlier builds agree).
#[derive(Debug)]
pub(crate) struct Embedded(pub &'static [(i64, &'static str, &'static str)]);

impl sqlx::migrate::MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>,
                > + Send,
        >,
    > {
        let migrations = self
            .0
            .iter()
            .map(|(version, description, sql)| {
                sqlx::migrate::Migration::new(
                    *version,
                    std::borrow::Cow::Borrowed(*description),
                    sqlx::migrate::MigrationType::Simple,
                    std::borrow::Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// Columns of `entries`, in `EntryRow` order.
pub(crate) const ENTRY_COLUMNS: &str = "seq, stream_id, stream_version, event_type, \
    schema_version, subject, recorded_at, metadata, payload, payload_digest, prev_hash, \
    entry_hash, signature, key_id, ledger_id";

/// The columns of `entries` the read models count, in [`CountedColumns`] order.
pub(crate) const COUNTED_COLUMNS: &str =
    "seq, stream_id, stream_version, event_type, subject, recorded_at";

/// A row of [`COUNTED_COLUMNS`].
pub(crate) type CountedColumns = (i64, String, i64, String, Option<Vec<u8>>, i64);

/// Decodes a row of [`COUNTED_COLUMNS`], checking each field as [`EntryRow::into_record`]
/// does, so that the read models stop at a row a full read would refuse instead of counting
/// it.
pub(crate) fn counted(
    (seq, stream_id, stream_version, event_type, subject, recorded_at): CountedColumns,
) -> Result<Counted, StoreError> {
    let seq = Seq(u64::try_from(seq).unwrap_or(u64::MAX));
    Ok(Counted {
        seq,
        stream_id: StreamId::parse(&stream_id).map_err(|_| malformed(seq, "stream_id"))?,
        stream_version: u64::try_from(stream_version)
            .map_err(|_| malformed(seq, "stream_version"))?,
        event_type: EventType::parse(&event_type).map_err(|_| malformed(seq, "event_type"))?,
        subject: subject
            .map(|s| SubjectHandle::from_slice(&s))
            .transpose()
            .map_err(|_| malformed(seq, "subject"))?,
        recorded_at_micros: recorded_at,
    })
}

/// What reads select: the columns plus whether the entry's subject has been erased. Asking
/// the database, not a per-process cache, keeps every instance in agreement after an erasure.
pub(crate) const ENTRY_SELECT: &str = "seq, stream_id, stream_version, event_type, \
    schema_version, subject, recorded_at, metadata, payload, payload_digest, prev_hash, \
    entry_hash, signature, key_id, ledger_id, \
    EXISTS (SELECT 1 FROM erased_subjects es WHERE es.handle = entries.subject) AS erased";

impl EntryRow {
    /// Whether the entry's subject has been erased (its data key destroyed).
    #[must_use]
    pub fn erased(&self) -> bool {
        self.erased
    }

    /// Its event type as stored.
    #[must_use]
    pub fn event_type_str(&self) -> &str {
        &self.event_type
    }

    /// Its stream version as stored.
    #[must_use]
    pub fn stream_version(&self) -> u64 {
        to_u64(self.stream_version)
    }

    /// Its seq, stream and subject as stored (before decoding, which checks them): what an
    /// access entry counts before the payload is opened.
    #[must_use]
    pub fn disclosure_fields(&self) -> (u64, &str, Option<SubjectHandle>) {
        (
            to_u64(self.seq),
            &self.stream_id,
            self.subject
                .as_deref()
                .and_then(|s| SubjectHandle::from_slice(s).ok()),
        )
    }

    /// Decodes the row, with whether its subject has been erased ([`EntryRow::erased`]).
    ///
    /// # Errors
    /// As [`EntryRow::into_record`].
    pub fn into_marked_record(self) -> Result<(Record, bool), MalformedRow> {
        let erased = self.erased;
        self.into_record().map(|r| (r, erased))
    }

    /// Decodes the row; any column out of shape is reported with the row's seq.
    pub fn into_record(self) -> Result<Record, MalformedRow> {
        let seq = Seq(u64::try_from(self.seq).unwrap_or(u64::MAX));
        let bad = |what: &str| MalformedRow {
            seq,
            what: what.to_owned(),
        };
        let header = EntryHeader {
            ledger_id: self
                .ledger_id
                .as_deref()
                .map(LedgerId::from_slice)
                .transpose()
                .map_err(|_| bad("ledger_id"))?,
            seq,
            stream_id: StreamId::parse(&self.stream_id).map_err(|_| bad("stream_id"))?,
            stream_version: u64::try_from(self.stream_version)
                .map_err(|_| bad("stream_version"))?,
            event_type: EventType::parse(&self.event_type).map_err(|_| bad("event_type"))?,
            schema_version: u32::try_from(self.schema_version)
                .map_err(|_| bad("schema_version"))?,
            subject: self
                .subject
                .map(|s| SubjectHandle::from_slice(&s))
                .transpose()
                .map_err(|_| bad("subject"))?,
            recorded_at_micros: self.recorded_at,
            metadata: serde_json::from_str::<Metadata>(&self.metadata)
                .map_err(|_| bad("metadata"))?,
        };
        Ok(Record {
            entry: Entry {
                header,
                payload_digest: PayloadDigest::from_slice(&self.payload_digest)
                    .map_err(|_| bad("payload_digest"))?,
                prev_hash: EntryHash::from_slice(&self.prev_hash).map_err(|_| bad("prev_hash"))?,
            },
            payload: self.payload.map(SealedPayload),
            entry_hash: EntryHash::from_slice(&self.entry_hash).map_err(|_| bad("entry_hash"))?,
            signature: Signature::from_slice(&self.signature).map_err(|_| bad("signature"))?,
            key_id: KeyId::from_hex(&self.key_id).map_err(|_| bad("key_id"))?,
        })
    }
}

/// What a verification starts from, read in one snapshot.
#[derive(Debug)]
pub struct AuditSnapshot {
    /// The last entry.
    pub head: Option<ChainHead>,
    /// The newest checkpoint (never beyond `head` on an intact ledger).
    pub latest_checkpoint: Option<Checkpoint>,
    /// Every key reference in the vault.
    pub vault: HashSet<KeyRef>,
}

/// A stored erasure tombstone: the receipt as first returned, sealed under an epoch's KEK.
#[derive(Clone, Debug)]
pub struct Tombstone {
    /// `nonce || AES-256-GCM(epoch KEK, receipt JSON)`.
    pub sealed_receipt: Vec<u8>,
    /// The KEK that seals it.
    pub kek_id: String,
}

/// What one attempt to clean the live files after erasures found (see
/// [`Store::clean_after_erasures`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// No erasure was waiting to be cleaned.
    Idle,
    /// The live files are clean past `erasures` more erasures, now marked cleaned;
    /// `remaining` still wait (committed since the attempt began, or still blocked).
    Cleaned {
        /// Erasures marked cleaned by this attempt.
        erasures: u64,
        /// Erasures still not cleaned.
        remaining: u64,
    },
    /// Something still holds a view of the database from before an erasure; nothing was
    /// marked. Retry later.
    Blocked {
        /// Erasures not yet cleaned.
        pending: u64,
        /// What blocks.
        by: CleanupBlocker,
    },
}

/// What keeps the live files from being cleaned. Names only database objects (process ids,
/// slot names, transaction ids), never data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CleanupBlocker {
    /// SQLite: another connection (a backup, a report, an operator's `sqlite3` session) holds a
    /// read transaction on the WAL, so it cannot be truncated; or a writer held the lock.
    SqliteReader,
    /// PostgreSQL: a session holds a snapshot (or a transaction) from before the erasure.
    Backend {
        /// Its process id.
        pid: i32,
        /// What kind of process (`client backend`, `walsender`, ...).
        backend_type: String,
        /// How many transactions old its snapshot is (`age(backend_xmin)`).
        xmin_age: i64,
        /// How long its transaction has been open, in seconds.
        transaction_secs: i64,
    },
    /// PostgreSQL: a replication slot holds the horizon back.
    ReplicationSlot {
        /// The slot.
        name: String,
    },
    /// PostgreSQL: a prepared transaction from before the erasure.
    PreparedTransaction {
        /// Its global id.
        gid: String,
    },
}

impl std::fmt::Display for CleanupBlocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CleanupBlocker::SqliteReader => f.write_str(
                "another connection holds a read transaction open on the SQLite database \
                 (a backup, a report, an sqlite3 session), so the WAL cannot be truncated",
            ),
            CleanupBlocker::Backend {
                pid,
                backend_type,
                xmin_age,
                transaction_secs,
            } => write!(
                f,
                "PostgreSQL {backend_type} pid {pid} holds a snapshot from before the erasure \
                 (xmin age {xmin_age} transactions, transaction open for {transaction_secs} s)"
            ),
            CleanupBlocker::ReplicationSlot { name } => write!(
                f,
                "PostgreSQL replication slot {name} holds back the horizon from before the erasure"
            ),
            CleanupBlocker::PreparedTransaction { gid } => write!(
                f,
                "PostgreSQL prepared transaction {gid} dates from before the erasure"
            ),
        }
    }
}

/// An `idempotency_keys` row's columns, in `IdempotencyRow::decode` order.
pub(crate) type IdempotencyColumns = (Vec<u8>, Vec<u8>, i64, i64, i64);

/// A recorded idempotency key: which entries the append it named committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdempotencyRow {
    /// SHA-256 of the client's key.
    pub key_hash: [u8; 32],
    /// SHA-256 of the request's clear parts.
    pub request_digest: [u8; 32],
    /// The append's first entry.
    pub first_seq: Seq,
    /// The append's last entry.
    pub last_seq: Seq,
    /// When it was committed, in microseconds since the Unix epoch.
    pub created_at_micros: i64,
}

impl IdempotencyRow {
    /// Decodes a row's columns.
    pub(crate) fn decode(
        key_hash: &[u8],
        digest: &[u8],
        first_seq: i64,
        last_seq: i64,
        created_at_micros: i64,
    ) -> Result<IdempotencyRow, StoreError> {
        let bad = || malformed(Seq(to_u64(first_seq)), "idempotency_keys");
        Ok(IdempotencyRow {
            key_hash: key_hash.try_into().map_err(|_| bad())?,
            request_digest: digest.try_into().map_err(|_| bad())?,
            first_seq: Seq(to_u64(first_seq)),
            last_seq: Seq(to_u64(last_seq)),
            created_at_micros,
        })
    }
}

/// Commits announced by other instances (PostgreSQL LISTEN/NOTIFY): what wakes subscribers on
/// one instance for appends made through another. An instance's own commits are not among
/// them: its writer wakes its subscribers once a batch has fully landed.
#[async_trait]
pub trait AppendNotices: Send {
    /// Returns when the next commit is announced. Notices sent while the connection was lost
    /// are not delivered (subscribers poll as well); an error means the connection could not be
    /// re-made.
    async fn next(&mut self) -> Result<(), StoreError>;
}

/// Erasures announced by any instance as they commit (PostgreSQL LISTEN/NOTIFY).
#[async_trait]
pub trait ErasureNotices: Send {
    /// The handle of the next subject erased. Notices sent while the connection was lost are
    /// not delivered (callers poll [`Store::erasures_after`] as well); an error means the
    /// connection could not be re-made.
    async fn next(&mut self) -> Result<SubjectHandle, StoreError>;
}

/// Storage of the ledger. One implementation per database backend.
#[async_trait]
pub trait Store:
    EpochStore
    + AccessStore
    + snapshots::SnapshotStore
    + subscriptions::SubscriptionStore
    + projections::ProjectionStore
    + Send
    + Sync
    + 'static
{
    /// Opens a write transaction that holds the ledger head: no other writer can append until
    /// it commits or is dropped (which rolls it back).
    async fn begin_append(&self) -> Result<Box<dyn AppendTx>, StoreError>;

    /// A transaction without the writer's lock, for reading what a batch needs while the batch
    /// before it commits (see `ledger::batch`). Only its reads may be used: it is always
    /// rolled back, and what it shows is trusted only after the head is checked under the lock.
    async fn begin_snapshot(&self) -> Result<Box<dyn AppendTx>, StoreError>;

    /// The last entry, if any.
    async fn head(&self) -> Result<Option<ChainHead>, StoreError>;

    /// Up to `limit` rows with `seq >= from`, in order, optionally no further than `to`.
    async fn read_global(
        &self,
        from: Seq,
        to: Option<Seq>,
        limit: u32,
    ) -> Result<Vec<EntryRow>, StoreError>;

    /// Up to `limit` `(seq, entry_hash)` pairs with `from <= seq <= to`, in order: the leaves
    /// of the Merkle tree read from the entries themselves, not from stored tree nodes.
    async fn entry_hashes(
        &self,
        from: Seq,
        to: Seq,
        limit: u32,
    ) -> Result<Vec<(Seq, EntryHash)>, StoreError>;

    /// Up to `limit` rows of one stream with `stream_version >= from_version`, in order.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: u32,
    ) -> Result<Vec<EntryRow>, StoreError>;

    /// The rows `filter` admits, in its direction (time travel, type and time filters,
    /// backward pages; `ledger::window` says which rows those are).
    async fn read_filtered(&self, filter: &RowFilter) -> Result<Vec<EntryRow>, StoreError>;

    /// `(seq, metadata)` of the entries of `stream` from seq `from` whose metadata names a
    /// compensated event (a superset: the caller parses the metadata).
    async fn compensating(
        &self,
        stream: &StreamId,
        from: Seq,
    ) -> Result<Vec<(Seq, String)>, StoreError>;

    /// The first seq recorded at or after `micros`, or the log's size if there is none (sound
    /// because `recorded_at` never decreases along the chain).
    async fn seq_recorded_from(&self, micros: i64) -> Result<u64, StoreError>;

    /// The wrapped data key for `key_ref`, if the vault holds it.
    async fn vault_key(&self, key_ref: &KeyRef) -> Result<Option<VaultRow>, StoreError>;

    /// The system data key's row, if one was created.
    async fn system_key(&self) -> Result<Option<VaultRow>, StoreError>;

    /// Stores a wrapped data key; `false` if a key with that reference already exists.
    async fn insert_vault_key(&self, row: &VaultRow, kek_id: &KekId) -> Result<bool, StoreError>;

    /// Every published signing key.
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRow>, StoreError>;

    /// Publishes a signing key (no-op if already published).
    async fn publish_signing_key(&self, key: &PublicKey) -> Result<(), StoreError>;

    /// Up to `limit` rows of one subject with `seq >= from`, in order.
    async fn read_subject(
        &self,
        handle: &SubjectHandle,
        from: Seq,
        limit: u32,
    ) -> Result<Vec<EntryRow>, StoreError>;

    /// The sealed link indexed under `index_mac`, if the subject is live.
    async fn subject_link(&self, index_mac: &[u8; 32]) -> Result<Option<LinkRow>, StoreError>;

    /// Up to `limit` tombstones after `after`, in MAC order (their expiry is sealed: the
    /// purger opens them to find the expired ones).
    async fn tombstones(
        &self,
        after: Option<&[u8; 32]>,
        limit: u32,
    ) -> Result<Vec<([u8; 32], Tombstone)>, StoreError>;

    /// Deletes one tombstone.
    async fn delete_tombstone(&self, tombstone_mac: &[u8; 32]) -> Result<(), StoreError>;

    /// One attempt to clean the live files past every erasure not yet cleaned, without waiting
    /// on anyone: SQLite truncates the WAL (on a connection of its own that gives up at once
    /// if a reader is in the way); PostgreSQL checks that no snapshot can still see the
    /// deleted rows, then VACUUMs the key tables. On success the erasures committed before
    /// the attempt began get `cleaned_at`.
    async fn clean_after_erasures(&self) -> Result<Cleanup, StoreError>;

    /// Up to `limit` erasures with `erasure_seq > after` (all, from the first, if `None`), in
    /// seq order: what other instances must drop from their key caches.
    async fn erasures_after(
        &self,
        after: Option<Seq>,
        limit: u32,
    ) -> Result<Vec<(Seq, SubjectHandle)>, StoreError>;

    /// Erasures announced as they commit, where the backend can (PostgreSQL); `None` on SQLite,
    /// where one process owns the database.
    async fn erasure_notices(&self) -> Result<Option<Box<dyn ErasureNotices>>, StoreError>;

    /// Commits by any instance announced as they happen, where the backend can (PostgreSQL);
    /// `None` on SQLite, where one process owns the database.
    async fn append_notices(&self) -> Result<Option<Box<dyn AppendNotices>>, StoreError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether other processes may write to the same database (several instances on
    /// PostgreSQL); `false` where one process owns it (SQLite).
    fn shared(&self) -> bool {
        false
    }

    /// From now on the writer's commits leave the write-ahead log to [`Store::checkpoint_wal`]
    /// (SQLite: a commit that checkpointed would wait for the copy and its fsync). For a
    /// process that calls `checkpoint_wal` regularly (a ledger). Nothing to do on PostgreSQL.
    async fn checkpoint_in_background(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Copies what the write-ahead log holds into the database file, outside the writer's
    /// path (SQLite). Never waits on a reader, and on the writer only briefly: what they hold
    /// is copied by a later call. Nothing to do on PostgreSQL.
    async fn checkpoint_wal(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The idempotency key `key_hash`, if an append recorded it at or after `not_before`.
    async fn idempotency(
        &self,
        key_hash: &[u8; 32],
        not_before_micros: i64,
    ) -> Result<Option<IdempotencyRow>, StoreError>;

    /// Deletes idempotency keys recorded before `before_micros`; returns how many.
    async fn purge_idempotency(&self, before_micros: i64) -> Result<u64, StoreError>;

    /// Hashes of the given perfect subtrees (leaves computed from `entries`); absent ids are
    /// not in the map.
    async fn merkle_nodes(&self, ids: &[NodeId])
    -> Result<HashMap<NodeId, MerkleHash>, StoreError>;

    /// Stores perfect-subtree hashes of height >= 1 (rebuilding the tree of an older ledger).
    async fn insert_merkle_nodes(&self, nodes: &[(NodeId, MerkleHash)]) -> Result<(), StoreError>;

    /// The newest checkpoint.
    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError>;

    /// Up to `limit` checkpoints with `from_size <= tree_size <= to_size`, oldest first.
    async fn checkpoints(
        &self,
        from_size: u64,
        to_size: u64,
        limit: u32,
    ) -> Result<Vec<Checkpoint>, StoreError>;

    /// The head, the latest checkpoint and the vault's key references, read in one consistent
    /// snapshot, for a verification that appends and checkpoints may race.
    async fn audit_snapshot(&self) -> Result<AuditSnapshot, StoreError>;

    /// The ledger identity the database records, if any.
    async fn ledger_id(&self) -> Result<Option<LedgerId>, StoreError>;

    /// Records the ledger identity if none is recorded; returns the one recorded.
    async fn init_ledger_id(&self, id: &LedgerId) -> Result<LedgerId, StoreError>;

    /// Closes connections (SQLite also checkpoints its WAL).
    async fn close(&self);
}

/// A write transaction holding the ledger head.
#[async_trait]
pub trait AppendTx: Send {
    /// The last entry, read under the transaction's lock.
    async fn head(&mut self) -> Result<Option<ChainHead>, StoreError>;

    /// The version of the last event in `stream`, if it has any.
    async fn stream_version(&mut self, stream: &StreamId) -> Result<Option<u64>, StoreError>;

    /// The versions of the last events of those of `streams` that have any, in as few round
    /// trips as the backend allows (a batch's reads happen under the writer's lock).
    async fn stream_versions(
        &mut self,
        streams: &[StreamId],
    ) -> Result<HashMap<StreamId, u64>, StoreError>;

    /// The sealed links of those of `index_macs` whose subjects are live, in one query.
    async fn subject_links(
        &mut self,
        index_macs: &[[u8; 32]],
    ) -> Result<HashMap<[u8; 32], LinkRow>, StoreError>;

    /// Inserts records, which continue the head in order.
    async fn insert(&mut self, records: &[Record]) -> Result<(), StoreError>;

    /// The sealed link indexed under `index_mac`, if the subject is live.
    async fn subject_link(&mut self, index_mac: &[u8; 32]) -> Result<Option<LinkRow>, StoreError>;

    /// The current epoch (the highest), read so that it cannot be destroyed before this
    /// transaction ends (PostgreSQL: `FOR SHARE`; SQLite: the single writer).
    async fn current_epoch(&mut self) -> Result<Option<EpochRow>, StoreError>;

    /// Creates a subject: its sealed link and its wrapped data key.
    async fn insert_subject(&mut self, link: &LinkRow, key: &VaultRow) -> Result<(), StoreError>;

    /// Destroys a subject's data key and link; records the erasure (what its receipt and status
    /// are rebuilt from).
    async fn erase_subject(
        &mut self,
        index_mac: &[u8; 32],
        handle: &SubjectHandle,
        erasure_seq: Seq,
        erased_at_micros: i64,
        record: &ErasureRecord,
    ) -> Result<(), StoreError>;

    /// The tombstone under `tombstone_mac`, if any (its expiry is inside the sealed receipt).
    async fn tombstone(
        &mut self,
        tombstone_mac: &[u8; 32],
    ) -> Result<Option<Tombstone>, StoreError>;

    /// Stores a tombstone.
    async fn insert_tombstone(
        &mut self,
        tombstone_mac: &[u8; 32],
        tombstone: &Tombstone,
    ) -> Result<(), StoreError>;

    /// Hashes of the given perfect subtrees, read under the transaction.
    async fn merkle_nodes(
        &mut self,
        ids: &[NodeId],
    ) -> Result<HashMap<NodeId, MerkleHash>, StoreError>;

    /// Stores perfect-subtree hashes of height >= 1.
    async fn insert_merkle_nodes(
        &mut self,
        nodes: &[(NodeId, MerkleHash)],
    ) -> Result<(), StoreError>;

    /// The newest checkpoint, read under the transaction.
    async fn latest_checkpoint(&mut self) -> Result<Option<Checkpoint>, StoreError>;

    /// Stores a checkpoint.
    async fn insert_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), StoreError>;

    /// Marks `key_id` as having signed from `first_seq` on, if not already marked.
    async fn mark_signing_key_used(
        &mut self,
        key_id: &KeyId,
        first_seq: Seq,
    ) -> Result<(), StoreError>;

    /// Records a rotation at `seq`: `old` signed its last entry there, `new` (published with
    /// its public key) signs from `seq + 1`.
    async fn record_rotation(
        &mut self,
        old: &KeyId,
        new: &PublicKey,
        seq: Seq,
    ) -> Result<(), StoreError>;

    /// The idempotency key `key_hash`, if recorded at or after `not_before`, read under the
    /// transaction's lock (so that two appends with one key cannot both miss it).
    async fn idempotency(
        &mut self,
        key_hash: &[u8; 32],
        not_before_micros: i64,
    ) -> Result<Option<IdempotencyRow>, StoreError>;

    /// Records idempotency keys; an expired row with the same key is replaced.
    async fn insert_idempotency(&mut self, rows: &[IdempotencyRow]) -> Result<(), StoreError>;

    /// The hash of the entry at `seq`, if there is one: how a commit whose outcome was lost is
    /// looked for.
    async fn entry_hash_at(&mut self, seq: Seq) -> Result<Option<EntryHash>, StoreError>;

    /// A small write that touches no ledger table (inserted and deleted again): whether the
    /// database takes writes again after a failure.
    async fn write_probe(&mut self) -> Result<(), StoreError>;

    /// The legal hold on `subject`, if any.
    async fn legal_hold(&mut self, subject: &SubjectHandle) -> Result<Option<HoldRow>, StoreError>;

    /// Places a legal hold.
    async fn insert_legal_hold(&mut self, hold: &HoldRow) -> Result<(), StoreError>;

    /// Ends the legal hold on `subject`.
    async fn delete_legal_hold(&mut self, subject: &SubjectHandle) -> Result<(), StoreError>;

    /// Commits durably; only after this returns may any caller be acknowledged. On an error
    /// the outcome may be unknown (the connection failed after COMMIT was sent): the
    /// connection is discarded, never reused.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// Rolls back. A transaction dropped without commit or rollback also rolls back, by
    /// closing its connection (a connection whose state is unknown is never reused).
    async fn rollback(self: Box<Self>);
}

/// Raw columns of a `checkpoints` row.
#[derive(Debug)]
pub struct CheckpointRow {
    tree_size: i64,
    root_hash: Vec<u8>,
    last_entry_hash: Vec<u8>,
    timestamp: i64,
    key_id: String,
    signature: Vec<u8>,
    ledger_id: Option<Vec<u8>>,
    previous_tree_size: Option<i64>,
}

/// Columns of `checkpoints`, in `CheckpointRow` order.
pub(crate) const CHECKPOINT_COLUMNS: &str = "tree_size, root_hash, last_entry_hash, timestamp, \
    key_id, signature, ledger_id, previous_tree_size";

impl CheckpointRow {
    /// Decodes the row.
    pub fn into_checkpoint(self) -> Result<Checkpoint, MalformedRow> {
        let size = u64::try_from(self.tree_size).unwrap_or(0);
        let bad = |what: &str| MalformedRow {
            seq: Seq(size.saturating_sub(1)),
            what: format!("checkpoints.{what}"),
        };
        let binding = match (self.ledger_id, self.previous_tree_size) {
            (Some(id), Some(previous)) => Some(crate::checkpoint::CheckpointBinding {
                ledger_id: LedgerId::from_slice(&id).map_err(|_| bad("ledger_id"))?,
                previous_tree_size: u64::try_from(previous)
                    .map_err(|_| bad("previous_tree_size"))?,
            }),
            (None, None) => None,
            _ => return Err(bad("ledger_id")),
        };
        Ok(Checkpoint {
            binding,
            tree_size: size,
            root_hash: MerkleHash(
                self.root_hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("root_hash"))?,
            ),
            last_entry_hash: EntryHash::from_slice(&self.last_entry_hash)
                .map_err(|_| bad("last_entry_hash"))?,
            timestamp_micros: self.timestamp,
            key_id: KeyId::from_hex(&self.key_id).map_err(|_| bad("key_id"))?,
            signature: Signature::from_slice(&self.signature).map_err(|_| bad("signature"))?,
        })
    }
}

// Decoding shared by both backends: the SQL differs per backend, what comes back does not.

/// A `u64` position as the databases store it (signed 64-bit).
/// A value bound to a filtered read's query.
pub(crate) enum FilterBind {
    Text(String),
    Int(i64),
}

/// The SQL of a filtered read (after `SELECT {ENTRY_SELECT} FROM entries`), with placeholders
/// made by `placeholder(n)` for n from 1, and the values to bind, in order. Shared by both
/// backends so that they admit exactly the same rows.
pub(crate) fn filtered_sql(
    f: &RowFilter,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<FilterBind>) {
    use crate::ledger::Direction;
    let mut conds = Vec::new();
    let mut binds = Vec::new();
    let mut push = |cond: &str, bind: FilterBind| {
        binds.push(bind);
        conds.push(cond.replace('?', &placeholder(binds.len())));
    };
    // A cursor on the log itself narrows the seq range instead of adding a second bound on
    // seq: SQLite's planner starts a rowid range at one lower bound and tests the other row by
    // row, so `seq >= 0 AND seq >= 900000` walked every row before the page (a page deep in
    // the log cost as much as reading everything before it).
    let (mut lo, mut hi) = (f.seqs.lo, f.seqs.hi);
    if f.stream.is_none() {
        match (f.direction, f.from) {
            (Direction::Forward, from) => lo = lo.max(from.unwrap_or(0)),
            (Direction::Backward, Some(from)) => hi = hi.min(from.saturating_add(1)),
            (Direction::Backward, None) => {}
        }
    }
    push("seq >= ?", FilterBind::Int(to_i64(lo)));
    push("seq < ?", FilterBind::Int(to_i64(hi)));
    if let Some(stream) = &f.stream {
        push(
            "stream_id = ?",
            FilterBind::Text(stream.as_str().to_owned()),
        );
    }
    if let Some(t) = &f.event_type {
        push("event_type = ?", FilterBind::Text(t.as_str().to_owned()));
    }
    let position = if f.stream.is_some() {
        "stream_version"
    } else {
        "seq"
    };
    let order = match (f.direction, f.from) {
        (Direction::Forward, from) => {
            if f.stream.is_some() {
                push(
                    &format!("{position} >= ?"),
                    FilterBind::Int(to_i64(from.unwrap_or(0))),
                );
            }
            "ASC"
        }
        (Direction::Backward, Some(from)) => {
            if f.stream.is_some() {
                push(&format!("{position} <= ?"), FilterBind::Int(to_i64(from)));
            }
            "DESC"
        }
        (Direction::Backward, None) => "DESC",
    };
    binds.push(FilterBind::Int(i64::from(f.limit)));
    let sql = format!(
        "WHERE {} ORDER BY {position} {order} LIMIT {}",
        conds.join(" AND "),
        placeholder(binds.len())
    );
    (sql, binds)
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored signed 64-bit position back as `u64` (negative values cannot be stored: CHECKs).
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The `data_keys.key_ref` column values as key references.
pub(crate) fn key_refs(rows: &[Vec<u8>]) -> Result<HashSet<KeyRef>, StoreError> {
    rows.iter()
        .map(|r| KeyRef::from_bytes(r).map_err(|_| malformed_meta()))
        .collect()
}

/// The first seq `key` signs, as the `signing_keys` table records it.
pub async fn key_first_seq(store: &dyn Store, key: &KeyId) -> Result<Option<Seq>, StoreError> {
    Ok(store
        .signing_keys()
        .await?
        .into_iter()
        .find(|r| r.key_id == *key)
        .and_then(|r| r.first_seq))
}

/// A `ledger_meta` or `data_keys` value out of shape.
pub(crate) fn malformed_meta() -> StoreError {
    malformed(Seq(0), "ledger_meta / data_keys")
}

fn malformed(seq: Seq, what: &str) -> StoreError {
    StoreError::Malformed(MalformedRow {
        seq,
        what: what.to_owned(),
    })
}

/// A `data_keys` row.
pub(crate) fn vault_row(
    key_ref: &[u8],
    wrapped: Vec<u8>,
    kek_id: String,
) -> Result<VaultRow, StoreError> {
    Ok(VaultRow {
        key_ref: KeyRef::from_bytes(key_ref).map_err(|_| malformed(Seq(0), "data_keys.key_ref"))?,
        wrapped: WrappedKey(wrapped),
        kek_id,
    })
}

/// A `signing_keys` row.
pub(crate) fn signing_key_row(
    key_id: &str,
    public_key: &[u8],
    first_seq: Option<i64>,
    last_seq: Option<i64>,
) -> Result<SigningKeyRow, StoreError> {
    Ok(SigningKeyRow {
        key_id: KeyId::from_hex(key_id).map_err(|_| malformed(Seq(0), "signing_keys.key_id"))?,
        public_key: PublicKey::from_bytes(public_key)
            .map_err(|_| malformed(Seq(0), "signing_keys.public_key"))?,
        first_seq: first_seq.map(|f| Seq(to_u64(f))),
        last_seq: last_seq.map(|f| Seq(to_u64(f))),
    })
}

/// An `entries` row's seq and entry hash.
pub(crate) fn entry_hash_row(seq: i64, hash: &[u8]) -> Result<(Seq, EntryHash), StoreError> {
    let seq = Seq(to_u64(seq));
    EntryHash::from_slice(hash)
        .map(|h| (seq, h))
        .map_err(|_| malformed(seq, "entry_hash"))
}

/// An insert's error: a unique-key violation means another writer took the position.
pub(crate) fn insert_error(e: sqlx::Error) -> StoreError {
    if e.as_database_error()
        .is_some_and(sqlx::error::DatabaseError::is_unique_violation)
    {
        StoreError::Conflict(e.to_string())
    } else {
        StoreError::Database(e)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::{CountedColumns, StoreError, counted};
    use crate::entry::Seq;

    /// A row the read models would count wrongly is an error naming the field, as a full read
    /// of the row would be, not a row skipped or counted under a mangled name.
    #[test]
    fn a_malformed_counted_column_is_an_error_naming_it() {
        let good: CountedColumns = (7, "acct-1".into(), 2, "Opened".into(), Some(vec![9; 16]), 5);
        let c = counted(good).unwrap();
        assert_eq!(
            (c.seq, c.stream_version, c.recorded_at_micros),
            (Seq(7), 2, 5)
        );
        assert_eq!(
            (c.stream_id.as_str(), c.event_type.as_str()),
            ("acct-1", "Opened")
        );
        assert_eq!(c.subject.unwrap().0, [9; 16]);
        for (what, row) in [
            (
                "stream_id",
                (7, "acct 1".into(), 2, "Opened".into(), None, 5),
            ),
            (
                "stream_version",
                (7, "acct-1".into(), -1, "Opened".into(), None, 5),
            ),
            (
                "event_type",
                (7, "acct-1".into(), 2, String::new(), None, 5),
            ),
            (
                "subject",
                (7, "acct-1".into(), 2, "Opened".into(), Some(vec![9; 15]), 5),
            ),
        ] {
            match counted(row) {
                Err(StoreError::Malformed(m)) => {
                    assert_eq!((m.seq, m.what.as_str()), (Seq(7), what));
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    /// Every file in `migrations/<backend>/` is embedded, in order, under the version and
    /// description sqlx's `migrate!` would give it.
    #[test]
    fn every_migration_file_is_embedded() {
        for (backend, embedded) in [
            ("sqlite", super::sqlite::MIGRATIONS),
            ("postgres", super::postgres::MIGRATIONS),
        ] {
            let dir = format!("{}/migrations/{backend}", env!("CARGO_MANIFEST_DIR"));
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            files.sort();
            assert_eq!(files.len(), embedded.len(), "{backend}: {files:?}");
            for (file, (version, description, sql)) in files.iter().zip(embedded) {
                let (v, rest) = file.split_once('_').unwrap();
                assert_eq!(v.parse::<i64>().unwrap(), *version, "{file}");
                assert_eq!(
                    rest.trim_end_matches(".sql").replace('_', " "),
                    *description
                );
                assert_eq!(
                    std::fs::read_to_string(format!("{dir}/{file}")).unwrap(),
                    *sql
                );
            }
        }
    }
}
