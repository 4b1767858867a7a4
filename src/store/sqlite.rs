//! The embedded default: SQLite in WAL mode with `synchronous=FULL`, so a commit is on disk
//! before it returns (NORMAL can lose the last transactions on power loss). One connection
//! writes; a small pool reads, never blocked by the writer thanks to WAL.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod epochs;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::epochs::{epoch_row, link_row};
use super::{
    AppendTx, AuditSnapshot, CHECKPOINT_COLUMNS, ChainHead, CheckpointRow, Cleanup, CleanupBlocker,
    ENTRY_COLUMNS, ENTRY_SELECT, EntryRow, ErasureNotices, FilterBind, HEAD_SELECT, SigningKeyRow,
    Store, StoreError, Tombstone, VaultRow, chain_head, entry_hash_row, erasure_row, insert_error,
    key_refs, malformed_meta, signing_key_row, to_i64, to_u64, vault_row,
};
use super::{EpochRow, ErasureRecord, IdempotencyColumns, IdempotencyRow, LinkRow, TxConn};
use crate::checkpoint::Checkpoint;
use crate::crypto::{KekId, KeyId, KeyRef, PublicKey};
use crate::entry::{EntryHash, LedgerId, Seq, StreamId, SubjectHandle};
use crate::ledger::RowFilter;
use crate::merkle::{MerkleHash, NodeId, leaf_hash};
use crate::record::Record;

/// Rows per multi-row INSERT: 14 columns each stays far below SQLite's 32,766 variables.
const INSERT_CHUNK_ROWS: usize = 500;
/// How long a connection waits for a lock held by another process (e.g. `verify`) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the cleaner's WAL truncation waits for a reader to let go. A TRUNCATE checkpoint
/// holds the write lock while it waits, so this bounds what one attempt can cost appends; a
/// blocked attempt is retried later instead.
const CLEANUP_BUSY_TIMEOUT: Duration = Duration::from_millis(5);

super::access::impl_access_store!(SqliteStore, read, write);
super::snapshots::impl_snapshot_store!(SqliteStore, read, write);
super::subscriptions::impl_subscription_store!(SqliteStore, read, write);
super::projections::impl_projection_store!(SqliteStore, read, write);

/// `migrations/sqlite/*.sql`, in order; a new migration is added here too.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "ledger",
        include_str!("../../migrations/sqlite/0001_ledger.sql"),
    ),
    (
        2,
        "subjects",
        include_str!("../../migrations/sqlite/0002_subjects.sql"),
    ),
    (
        3,
        "merkle",
        include_str!("../../migrations/sqlite/0003_merkle.sql"),
    ),
    (
        4,
        "identity",
        include_str!("../../migrations/sqlite/0004_identity.sql"),
    ),
    (
        5,
        "epochs",
        include_str!("../../migrations/sqlite/0005_epochs.sql"),
    ),
    (
        6,
        "cleanup",
        include_str!("../../migrations/sqlite/0006_cleanup.sql"),
    ),
    (
        7,
        "idempotency",
        include_str!("../../migrations/sqlite/0007_idempotency.sql"),
    ),
    (
        8,
        "access",
        include_str!("../../migrations/sqlite/0008_access.sql"),
    ),
    (
        9,
        "reads",
        include_str!("../../migrations/sqlite/0009_reads.sql"),
    ),
    (
        10,
        "snapshots",
        include_str!("../../migrations/sqlite/0010_snapshots.sql"),
    ),
    (
        11,
        "subscriptions",
        include_str!("../../migrations/sqlite/0011_subscriptions.sql"),
    ),
    (
        12,
        "projections",
        include_str!("../../migrations/sqlite/0012_projections.sql"),
    ),
];

/// The SQLite store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    write: SqlitePool,
    read: SqlitePool,
    /// The connection that checkpoints the WAL (the cleaner's truncations and the background
    /// copies of `checkpoint_wal`), which never waits: checkpointing must not queue behind
    /// (or hold up) the writer's connection.
    cleaner: SqlitePool,
    /// Whether the WAL is checkpointed in the background, not by the writer's commits.
    background: Arc<AtomicBool>,
}

fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        // Deleted rows (destroyed keys) are overwritten with zeros, not just unlinked.
        .pragma("secure_delete", "on")
}

fn micros_now() -> i64 {
    crate::timefmt::now_micros()
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    /// With `max_bytes`, writes that would grow the database beyond it fail as on a full disk
    /// (a quota; SQLite's `max_page_count` on the writing connection).
    pub async fn open(path: &Path, max_bytes: Option<u64>) -> Result<SqliteStore, StoreError> {
        let mut write_options = options(path).create_if_missing(true);
        if let Some(bytes) = max_bytes {
            // The default page size; a quota is approximate by nature.
            write_options = write_options.pragma("max_page_count", (bytes / 4096).to_string());
        }
        // Once a ledger checkpoints in the background (`checkpoint_in_background`), the writer's
        // connection no longer does: by default the commit that fills the WAL past 1,000 pages
        // copies it into the database file and fsyncs that file before it returns (tens of
        // milliseconds on the append path). Set again on a connection the pool re-opens; a
        // process without a ledger (offline commands) keeps SQLite's default.
        let background = Arc::new(AtomicBool::new(false));
        let on_connect = Arc::clone(&background);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .after_connect(move |conn, _| {
                let background = on_connect.load(Ordering::SeqCst);
                Box::pin(async move {
                    if background {
                        sqlx::query(NO_AUTOCHECKPOINT).execute(conn).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(write_options)
            .await?;
        sqlx::migrate::Migrator::new(super::Embedded(MIGRATIONS))
            .await?
            .run(&write)
            .await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options(path))
            .await?;
        let cleaner = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options(path).busy_timeout(CLEANUP_BUSY_TIMEOUT))
            .await?;
        Ok(SqliteStore {
            write,
            read,
            cleaner,
            background,
        })
    }

    /// Opens an existing database for reading only (for `verify` beside a running server).
    pub async fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .read_only(true)
            .busy_timeout(BUSY_TIMEOUT);
        let read = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await?;
        Ok(SqliteStore {
            write: read.clone(),
            cleaner: read.clone(),
            read,
            background: Arc::default(),
        })
    }
}

async fn head_on<'e, E>(executor: E) -> Result<Option<ChainHead>, StoreError>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let row = sqlx::query(HEAD_SELECT).fetch_optional(executor).await?;
    let Some(row) = row else { return Ok(None) };
    let hash: Vec<u8> = row.try_get("entry_hash")?;
    let key_id: String = row.try_get("key_id")?;
    let stream: String = row.try_get("stream_id")?;
    let ty: String = row.try_get("event_type")?;
    let meta: String = row.try_get("metadata")?;
    chain_head(
        row.try_get("seq")?,
        &hash,
        row.try_get("recorded_at")?,
        &key_id,
        &stream,
        &ty,
        &meta,
    )
    .map(Some)
}

#[async_trait]
impl Store for SqliteStore {
    async fn begin_append(&self) -> Result<Box<dyn AppendTx>, StoreError> {
        // IMMEDIATE takes the write lock now, so the head read below cannot go stale.
        let tx = TxConn::begin(&self.write, "BEGIN IMMEDIATE").await?;
        Ok(Box::new(SqliteAppendTx { tx }))
    }

    async fn begin_snapshot(&self) -> Result<Box<dyn AppendTx>, StoreError> {
        // A deferred transaction on a reading connection: one snapshot, no lock.
        let tx = TxConn::begin(&self.read, "BEGIN").await?;
        Ok(Box::new(SqliteAppendTx { tx }))
    }

    async fn head(&self) -> Result<Option<ChainHead>, StoreError> {
        head_on(&self.read).await
    }

    async fn idempotency(
        &self,
        key_hash: &[u8; 32],
        not_before_micros: i64,
    ) -> Result<Option<IdempotencyRow>, StoreError> {
        idempotency_on(&self.read, key_hash, not_before_micros).await
    }

    async fn purge_idempotency(&self, before_micros: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
            .bind(before_micros)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected())
    }

    async fn read_global(
        &self,
        from: Seq,
        to: Option<Seq>,
        limit: u32,
    ) -> Result<Vec<EntryRow>, StoreError> {
        let sql = format!(
            "SELECT {ENTRY_SELECT} FROM entries WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?"
        );
        Ok(sqlx::query_as::<_, EntryRow>(&sql)
            .bind(to_i64(from.0))
            .bind(to.map_or(i64::MAX, |t| to_i64(t.0)))
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?)
    }

    async fn entry_hashes(
        &self,
        from: Seq,
        to: Seq,
        limit: u32,
    ) -> Result<Vec<(Seq, EntryHash)>, StoreError> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, entry_hash FROM entries WHERE seq >= ? AND seq <= ? ORDER BY seq LIMIT ?",
        )
        .bind(to_i64(from.0))
        .bind(to_i64(to.0))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(seq, hash)| entry_hash_row(seq, &hash))
            .collect()
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        limit: u32,
    ) -> Result<Vec<EntryRow>, StoreError> {
        let sql = format!(
            "SELECT {ENTRY_SELECT} FROM entries WHERE stream_id = ? AND stream_version >= ? \
             ORDER BY stream_version LIMIT ?"
        );
        Ok(sqlx::query_as::<_, EntryRow>(&sql)
            .bind(stream.as_str())
            .bind(to_i64(from_version))
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?)
    }

    async fn read_filtered(&self, filter: &RowFilter) -> Result<Vec<EntryRow>, StoreError> {
        let (tail, binds) = super::filtered_sql(filter, |_| "?".to_owned());
        let sql = format!("SELECT {ENTRY_SELECT} FROM entries {tail}");
        let mut query = sqlx::query_as::<_, EntryRow>(&sql);
        for b in binds {
            query = match b {
                FilterBind::Text(t) => query.bind(t),
                FilterBind::Int(i) => query.bind(i),
            };
        }
        Ok(query.fetch_all(&self.read).await?)
    }

    async fn compensating(
        &self,
        stream: &StreamId,
        from: Seq,
    ) -> Result<Vec<(Seq, String)>, StoreError> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT seq, metadata FROM entries WHERE stream_id = ? AND seq >= ? \
             AND metadata LIKE '%\"auditledger:%' ORDER BY seq",
        )
        .bind(stream.as_str())
        .bind(to_i64(from.0))
        .fetch_all(&self.read)
        .await?;
        Ok(rows.into_iter().map(|(s, m)| (Seq(to_u64(s)), m)).collect())
    }

    async fn seq_recorded_from(&self, micros: i64) -> Result<u64, StoreError> {
        let seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM entries WHERE recorded_at >= ? \
             ORDER BY recorded_at, seq LIMIT 1), (SELECT COALESCE(MAX(seq) + 1, 0) FROM entries))",
        )
        .bind(micros)
        .fetch_one(&self.read)
        .await?;
        Ok(to_u64(seq))
    }

    async fn vault_key(&self, key_ref: &KeyRef) -> Result<Option<VaultRow>, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>, String)> =
            sqlx::query_as("SELECT key_ref, wrapped, kek_id FROM data_keys WHERE key_ref = ?")
                .bind(key_ref.to_bytes().to_vec())
                .fetch_optional(&self.read)
                .await?;
        row.map(|(r, w, k)| vault_row(&r, w, k)).transpose()
    }

    async fn system_key(&self) -> Result<Option<VaultRow>, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>, String)> = sqlx::query_as(
            "SELECT key_ref, wrapped, kek_id FROM data_keys WHERE substr(key_ref, 1, 1) = x'00' \
             ORDER BY created_at LIMIT 1",
        )
        .fetch_optional(&self.write)
        .await?;
        row.map(|(r, w, k)| vault_row(&r, w, k)).transpose()
    }

    async fn insert_vault_key(&self, row: &VaultRow, kek_id: &KekId) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO data_keys (key_ref, wrapped, kek_id, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (key_ref) DO NOTHING",
        )
        .bind(row.key_ref.to_bytes().to_vec())
        .bind(row.wrapped.0.clone())
        .bind(kek_id.to_hex())
        .bind(micros_now())
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRow>, StoreError> {
        let rows: Vec<(String, Vec<u8>, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT key_id, public_key, first_seq, last_seq FROM signing_keys \
             ORDER BY first_seq IS NULL, first_seq, created_at",
        )
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(id, pk, first, last)| signing_key_row(&id, &pk, first, last))
            .collect()
    }

    async fn publish_signing_key(&self, key: &PublicKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (key_id, public_key, first_seq, created_at) \
             VALUES (?, ?, NULL, ?) ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(key.key_id().to_hex())
        .bind(key.to_bytes().to_vec())
        .bind(micros_now())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    async fn checkpoint_in_background(&self) -> Result<(), StoreError> {
        self.background.store(true, Ordering::SeqCst);
        sqlx::query(NO_AUTOCHECKPOINT).execute(&self.write).await?;
        Ok(())
    }

    async fn checkpoint_wal(&self) -> Result<(), StoreError> {
        // PASSIVE: copies the frames no reader still needs, without waiting for anyone. Under
        // steady appends it never catches up with the last commit, so the WAL is never
        // restarted and would grow for as long as the appends go on; past
        // WAL_RESTART_FRAMES a RESTART lets the next commit start it over. A RESTART holds
        // the write lock while it copies what the PASSIVE left (the frames of a few commits)
        // and fsyncs, and gives up if it cannot take the lock within the connection's 5 ms:
        // one short stall of the appends per ~16 MB of WAL, where SQLite's own checkpoint
        // stalls the commit that fills each 4 MB for the whole copy.
        let Some((_, frames, _)) = wal_checkpoint(&self.cleaner, "PASSIVE").await? else {
            return Ok(());
        };
        if frames > WAL_RESTART_FRAMES {
            wal_checkpoint(&self.cleaner, "RESTART").await?;
        }
        Ok(())
    }

    async fn read_subject(
        &self,
        handle: &SubjectHandle,
        from: Seq,
        limit: u32,
    ) -> Result<Vec<EntryRow>, StoreError> {
        let sql = format!(
            "SELECT {ENTRY_SELECT} FROM entries WHERE subject = ? AND seq >= ? ORDER BY seq LIMIT ?"
        );
        Ok(sqlx::query_as::<_, EntryRow>(&sql)
            .bind(handle.0.to_vec())
            .bind(to_i64(from.0))
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?)
    }

    async fn subject_link(&self, index_mac: &[u8; 32]) -> Result<Option<LinkRow>, StoreError> {
        subject_link_on(&self.read, index_mac).await
    }

    async fn tombstones(
        &self,
        after: Option<&[u8; 32]>,
        limit: u32,
    ) -> Result<Vec<([u8; 32], Tombstone)>, StoreError> {
        let rows: Vec<(Vec<u8>, Vec<u8>, String)> = sqlx::query_as(
            "SELECT tombstone_mac, sealed_receipt, kek_id FROM erasure_tombstones \
             WHERE tombstone_mac > ? ORDER BY tombstone_mac LIMIT ?",
        )
        .bind(after.map(|a| a.to_vec()).unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(mac, sealed_receipt, kek_id)| {
                let mac: [u8; 32] = mac.as_slice().try_into().map_err(|_| {
                    StoreError::Malformed(super::MalformedRow {
                        seq: Seq(0),
                        what: "erasure_tombstones.tombstone_mac".to_owned(),
                    })
                })?;
                Ok((
                    mac,
                    Tombstone {
                        sealed_receipt,
                        kek_id,
                    },
                ))
            })
            .collect()
    }

    async fn delete_tombstone(&self, tombstone_mac: &[u8; 32]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM erasure_tombstones WHERE tombstone_mac = ?")
            .bind(tombstone_mac.to_vec())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn clean_after_erasures(&self) -> Result<Cleanup, StoreError> {
        let (pending, newest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MAX(erasure_seq) FROM erased_subjects WHERE cleaned_at IS NULL",
        )
        .fetch_one(&self.read)
        .await?;
        let Some(newest) = newest else {
            return Ok(Cleanup::Idle);
        };
        // The row is (busy, WAL frames, frames checkpointed); busy = 1 when a reader (or the
        // writer) kept the WAL from being reset, in which case its old frames remain.
        let busy = match wal_checkpoint(&self.cleaner, "TRUNCATE").await? {
            Some((busy, _, _)) => busy != 0,
            None => true,
        };
        if busy {
            return Ok(Cleanup::Blocked {
                pending: to_u64(pending),
                by: CleanupBlocker::SqliteReader,
            });
        }
        // Every erasure up to `newest` committed before the truncation, so none of their
        // destroyed rows is in a live file any longer.
        let marked = sqlx::query(
            "UPDATE erased_subjects SET cleaned_at = ? WHERE cleaned_at IS NULL AND erasure_seq <= ?",
        )
        .bind(micros_now())
        .bind(newest)
        .execute(&self.write)
        .await?
        .rows_affected();
        let remaining: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM erased_subjects WHERE cleaned_at IS NULL")
                .fetch_one(&self.read)
                .await?;
        Ok(Cleanup::Cleaned {
            erasures: marked,
            remaining: to_u64(remaining),
        })
    }

    async fn erasures_after(
        &self,
        after: Option<Seq>,
        limit: u32,
    ) -> Result<Vec<(Seq, SubjectHandle)>, StoreError> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT erasure_seq, handle FROM erased_subjects WHERE erasure_seq > ? \
             ORDER BY erasure_seq LIMIT ?",
        )
        .bind(after.map_or(-1, |s| to_i64(s.0)))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|(seq, h)| erasure_row(*seq, h)).collect()
    }

    async fn erasure_notices(&self) -> Result<Option<Box<dyn ErasureNotices>>, StoreError> {
        Ok(None)
    }

    async fn append_notices(&self) -> Result<Option<Box<dyn super::AppendNotices>>, StoreError> {
        Ok(None)
    }

    async fn merkle_nodes(
        &self,
        ids: &[NodeId],
    ) -> Result<HashMap<NodeId, MerkleHash>, StoreError> {
        let mut conn = self.read.acquire().await?;
        merkle_nodes_on(&mut conn, ids).await
    }

    async fn insert_merkle_nodes(&self, nodes: &[(NodeId, MerkleHash)]) -> Result<(), StoreError> {
        let mut tx = TxConn::begin(&self.write, "BEGIN IMMEDIATE").await?;
        insert_merkle_nodes_on(tx.conn(), nodes).await?;
        tx.commit().await
    }

    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let mut conn = self.read.acquire().await?;
        latest_checkpoint_on(&mut conn).await
    }

    async fn checkpoints(
        &self,
        from_size: u64,
        to_size: u64,
        limit: u32,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE tree_size >= ? AND tree_size <= ? \
             ORDER BY tree_size LIMIT ?"
        );
        let rows: Vec<CheckpointRow> = sqlx::query_as(&sql)
            .bind(to_i64(from_size))
            .bind(to_i64(to_size))
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows.into_iter()
            .map(|r| r.into_checkpoint().map_err(StoreError::from))
            .collect()
    }

    async fn audit_snapshot(&self) -> Result<AuditSnapshot, StoreError> {
        // One read transaction: in WAL mode it sees a single snapshot of the database.
        let mut tx = self.read.begin().await?;
        let latest_checkpoint = latest_checkpoint_on(&mut tx).await?;
        let head = head_on(&mut *tx).await?;
        let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key_ref FROM data_keys")
            .fetch_all(&mut *tx)
            .await?;
        tx.rollback().await?;
        Ok(AuditSnapshot {
            head,
            latest_checkpoint,
            vault: key_refs(&rows)?,
        })
    }

    async fn ledger_id(&self) -> Result<Option<LedgerId>, StoreError> {
        let v: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM ledger_meta WHERE name = 'ledger_id'")
                .fetch_optional(&self.read)
                .await?;
        v.map(|v| LedgerId::from_slice(&v).map_err(|_| malformed_meta()))
            .transpose()
    }

    async fn init_ledger_id(&self, id: &LedgerId) -> Result<LedgerId, StoreError> {
        sqlx::query(
            "INSERT INTO ledger_meta (name, value) VALUES ('ledger_id', ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(id.0.to_vec())
        .execute(&self.write)
        .await?;
        self.ledger_id().await?.ok_or_else(malformed_meta)
    }

    async fn close(&self) {
        self.cleaner.close().await;
        self.read.close().await;
        self.write.close().await;
    }
}

/// Turns SQLite's checkpoint at commit off on a connection.
const NO_AUTOCHECKPOINT: &str = "PRAGMA wal_autocheckpoint = 0";

/// Frames (pages) the WAL may hold before a background checkpoint makes the next commit start
/// it over (~16 MB).
const WAL_RESTART_FRAMES: i64 = 4096;

/// Runs `PRAGMA wal_checkpoint(mode)` on `pool`: (busy, frames in the WAL, frames copied), or
/// `None` when another checkpoint was running (it copies these frames too).
async fn wal_checkpoint(
    pool: &SqlitePool,
    mode: &str,
) -> Result<Option<(i64, i64, i64)>, StoreError> {
    match sqlx::query_as::<_, (i64, i64, i64)>(&format!("PRAGMA wal_checkpoint({mode})"))
        .fetch_one(pool)
        .await
    {
        Ok(row) => Ok(Some(row)),
        Err(e) if is_busy(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED (any extended code): someone else holds a lock.
fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(sqlx::error::DatabaseError::code)
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

/// Perfect-subtree hashes: leaves from `entries`, the rest from `merkle_nodes`.
async fn merkle_nodes_on(
    conn: &mut SqliteConnection,
    ids: &[NodeId],
) -> Result<HashMap<NodeId, MerkleHash>, StoreError> {
    let mut out = HashMap::with_capacity(ids.len());
    let (leaves, inner): (Vec<&NodeId>, Vec<&NodeId>) = ids.iter().partition(|id| id.level == 0);
    for chunk in leaves.chunks(INSERT_CHUNK_ROWS) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT seq, entry_hash FROM entries WHERE seq IN (");
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push_bind(to_i64(id.index));
        }
        qb.push(")");
        let rows: Vec<(i64, Vec<u8>)> = qb.build_query_as().fetch_all(&mut *conn).await?;
        for (seq, hash) in rows {
            out.insert(
                NodeId {
                    level: 0,
                    index: to_u64(seq),
                },
                leaf_hash(&hash),
            );
        }
    }
    for chunk in inner.chunks(INSERT_CHUNK_ROWS) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT level, idx, hash FROM merkle_nodes WHERE (level, idx) IN (");
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push("(")
                .push_bind_unseparated(i64::from(id.level))
                .push_unseparated(", ")
                .push_bind_unseparated(to_i64(id.index))
                .push_unseparated(")");
        }
        qb.push(")");
        let rows: Vec<(i64, i64, Vec<u8>)> = qb.build_query_as().fetch_all(&mut *conn).await?;
        for (level, idx, hash) in rows {
            let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
                return Err(StoreError::Malformed(super::MalformedRow {
                    seq: Seq(0),
                    what: format!("merkle_nodes({level}, {idx})"),
                }));
            };
            out.insert(
                NodeId {
                    level: u8::try_from(level).unwrap_or(0),
                    index: to_u64(idx),
                },
                MerkleHash(hash),
            );
        }
    }
    Ok(out)
}

async fn insert_merkle_nodes_on(
    conn: &mut SqliteConnection,
    nodes: &[(NodeId, MerkleHash)],
) -> Result<(), StoreError> {
    for chunk in nodes.chunks(INSERT_CHUNK_ROWS) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT OR IGNORE INTO merkle_nodes (level, idx, hash) ");
        qb.push_values(chunk, |mut b, (id, hash)| {
            b.push_bind(i64::from(id.level))
                .push_bind(to_i64(id.index))
                .push_bind(hash.0.to_vec());
        });
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn latest_checkpoint_on(
    conn: &mut SqliteConnection,
) -> Result<Option<Checkpoint>, StoreError> {
    let sql =
        format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY tree_size DESC LIMIT 1");
    let row: Option<CheckpointRow> = sqlx::query_as(&sql).fetch_optional(&mut *conn).await?;
    Ok(row.map(CheckpointRow::into_checkpoint).transpose()?)
}

async fn subject_link_on<'e, E>(
    executor: E,
    index_mac: &[u8; 32],
) -> Result<Option<LinkRow>, StoreError>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let row: Option<(Vec<u8>, Vec<u8>, String)> = sqlx::query_as(
        "SELECT index_mac, sealed_handle, kek_id FROM subject_links WHERE index_mac = ?",
    )
    .bind(index_mac.to_vec())
    .fetch_optional(executor)
    .await?;
    row.map(|(m, s, k)| link_row(&m, s, k)).transpose()
}

struct SqliteAppendTx {
    tx: TxConn<Sqlite>,
}

#[async_trait]
impl AppendTx for SqliteAppendTx {
    async fn head(&mut self) -> Result<Option<ChainHead>, StoreError> {
        head_on(self.tx.conn()).await
    }

    async fn stream_version(&mut self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT MAX(stream_version) FROM entries WHERE stream_id = ?")
                .bind(stream.as_str())
                .fetch_one(self.tx.conn())
                .await?;
        Ok(v.map(to_u64))
    }

    async fn stream_versions(
        &mut self,
        streams: &[StreamId],
    ) -> Result<HashMap<StreamId, u64>, StoreError> {
        let mut out = HashMap::with_capacity(streams.len());
        // One scalar subquery per stream: each is answered from the (stream_id,
        // stream_version) index in O(log n), which a GROUP BY over an IN list is not.
        for chunk in streams.chunks(INSERT_CHUNK_ROWS / 2) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("");
            for (i, s) in chunk.iter().enumerate() {
                if i > 0 {
                    qb.push(" UNION ALL ");
                }
                qb.push("SELECT ")
                    .push_bind(i64::try_from(i).unwrap_or(i64::MAX))
                    .push(", (SELECT MAX(stream_version) FROM entries WHERE stream_id = ")
                    .push_bind(s.as_str().to_owned())
                    .push(")");
            }
            let rows: Vec<(i64, Option<i64>)> =
                qb.build_query_as().fetch_all(self.tx.conn()).await?;
            for (i, v) in rows {
                if let (Some(v), Some(id)) = (v, usize::try_from(i).ok().and_then(|i| chunk.get(i)))
                {
                    out.insert(id.clone(), to_u64(v));
                }
            }
        }
        Ok(out)
    }

    async fn subject_links(
        &mut self,
        index_macs: &[[u8; 32]],
    ) -> Result<HashMap<[u8; 32], LinkRow>, StoreError> {
        let mut out = HashMap::with_capacity(index_macs.len());
        for chunk in index_macs.chunks(INSERT_CHUNK_ROWS) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "SELECT index_mac, sealed_handle, kek_id FROM subject_links WHERE index_mac IN (",
            );
            let mut list = qb.separated(", ");
            for mac in chunk {
                list.push_bind(mac.to_vec());
            }
            qb.push(")");
            let rows: Vec<(Vec<u8>, Vec<u8>, String)> =
                qb.build_query_as().fetch_all(self.tx.conn()).await?;
            for (m, sealed, kek) in rows {
                let link = link_row(&m, sealed, kek)?;
                out.insert(link.index_mac, link);
            }
        }
        Ok(out)
    }

    async fn insert(&mut self, records: &[Record]) -> Result<(), StoreError> {
        for chunk in records.chunks(INSERT_CHUNK_ROWS) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new(format!("INSERT INTO entries ({ENTRY_COLUMNS}) "));
            qb.push_values(chunk, |mut b, r| {
                let h = &r.entry.header;
                b.push_bind(to_i64(h.seq.0))
                    .push_bind(h.stream_id.as_str().to_owned())
                    .push_bind(to_i64(h.stream_version))
                    .push_bind(h.event_type.as_str().to_owned())
                    .push_bind(i64::from(h.schema_version))
                    .push_bind(h.subject.map(|s| s.0.to_vec()))
                    .push_bind(h.recorded_at_micros)
                    .push_bind(serde_json::to_string(&h.metadata).unwrap_or_default())
                    .push_bind(r.payload.as_ref().map(|p| p.0.clone()))
                    .push_bind(r.entry.payload_digest.0.to_vec())
                    .push_bind(r.entry.prev_hash.0.to_vec())
                    .push_bind(r.entry_hash.0.to_vec())
                    .push_bind(r.signature.0.to_vec())
                    .push_bind(r.key_id.to_hex())
                    .push_bind(h.ledger_id.map(|l| l.0.to_vec()));
            });
            qb.build()
                .execute(self.tx.conn())
                .await
                .map_err(insert_error)?;
        }
        Ok(())
    }

    async fn subject_link(&mut self, index_mac: &[u8; 32]) -> Result<Option<LinkRow>, StoreError> {
        subject_link_on(self.tx.conn(), index_mac).await
    }

    async fn current_epoch(&mut self) -> Result<Option<EpochRow>, StoreError> {
        let row: Option<(i64, String, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT epoch, kek_id, started_at, rotate_by, destroyed_at FROM kek_epochs \
             WHERE destroyed_at IS NULL ORDER BY epoch DESC LIMIT 1",
        )
        .fetch_optional(self.tx.conn())
        .await?;
        row.map(|(e, k, s, r, d)| epoch_row(e, k, s, r, d))
            .transpose()
    }

    async fn insert_subject(&mut self, link: &LinkRow, key: &VaultRow) -> Result<(), StoreError> {
        let now = micros_now();
        sqlx::query(
            "INSERT INTO subject_links (index_mac, sealed_handle, kek_id) VALUES (?, ?, ?)",
        )
        .bind(link.index_mac.to_vec())
        .bind(link.sealed_handle.clone())
        .bind(&link.kek_id)
        .execute(self.tx.conn())
        .await?;
        sqlx::query(
            "INSERT INTO data_keys (key_ref, wrapped, kek_id, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(key.key_ref.to_bytes().to_vec())
        .bind(key.wrapped.0.clone())
        .bind(&key.kek_id)
        .bind(now)
        .execute(self.tx.conn())
        .await?;
        Ok(())
    }

    async fn erase_subject(
        &mut self,
        index_mac: &[u8; 32],
        handle: &SubjectHandle,
        erasure_seq: Seq,
        erased_at_micros: i64,
        record: &ErasureRecord,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM data_keys WHERE key_ref = ?")
            .bind(KeyRef::Subject(*handle).to_bytes().to_vec())
            .execute(self.tx.conn())
            .await?;
        sqlx::query("DELETE FROM subject_links WHERE index_mac = ?")
            .bind(index_mac.to_vec())
            .execute(self.tx.conn())
            .await?;
        sqlx::query(
            "INSERT INTO erased_subjects (handle, erasure_seq, erased_at, request_ref, epoch, \
             forgotten_by, receipt_key_id, receipt_signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(handle.0.to_vec())
        .bind(to_i64(erasure_seq.0))
        .bind(erased_at_micros)
        .bind(&record.request_ref)
        .bind(i64::from(record.epoch))
        .bind(record.forgotten_by)
        .bind(&record.receipt_key_id)
        .bind(record.receipt_signature.clone())
        .execute(self.tx.conn())
        .await?;
        Ok(())
    }

    async fn tombstone(
        &mut self,
        tombstone_mac: &[u8; 32],
    ) -> Result<Option<Tombstone>, StoreError> {
        let row: Option<(Vec<u8>, String)> = sqlx::query_as(
            "SELECT sealed_receipt, kek_id FROM erasure_tombstones WHERE tombstone_mac = ?",
        )
        .bind(tombstone_mac.to_vec())
        .fetch_optional(self.tx.conn())
        .await?;
        Ok(row.map(|(sealed_receipt, kek_id)| Tombstone {
            sealed_receipt,
            kek_id,
        }))
    }

    async fn insert_tombstone(
        &mut self,
        tombstone_mac: &[u8; 32],
        tombstone: &Tombstone,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO erasure_tombstones (tombstone_mac, sealed_receipt, kek_id) \
             VALUES (?, ?, ?)",
        )
        .bind(tombstone_mac.to_vec())
        .bind(tombstone.sealed_receipt.clone())
        .bind(&tombstone.kek_id)
        .execute(self.tx.conn())
        .await?;
        Ok(())
    }

    async fn merkle_nodes(
        &mut self,
        ids: &[NodeId],
    ) -> Result<HashMap<NodeId, MerkleHash>, StoreError> {
        merkle_nodes_on(self.tx.conn(), ids).await
    }

    async fn insert_merkle_nodes(
        &mut self,
        nodes: &[(NodeId, MerkleHash)],
    ) -> Result<(), StoreError> {
        insert_merkle_nodes_on(self.tx.conn(), nodes).await
    }

    async fn latest_checkpoint(&mut self) -> Result<Option<Checkpoint>, StoreError> {
        latest_checkpoint_on(self.tx.conn()).await
    }

    async fn insert_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO checkpoints ({CHECKPOINT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(to_i64(cp.tree_size))
        .bind(cp.root_hash.0.to_vec())
        .bind(cp.last_entry_hash.0.to_vec())
        .bind(cp.timestamp_micros)
        .bind(cp.key_id.to_hex())
        .bind(cp.signature.0.to_vec())
        .bind(cp.binding.map(|b| b.ledger_id.0.to_vec()))
        .bind(cp.binding.map(|b| to_i64(b.previous_tree_size)))
        .execute(self.tx.conn())
        .await?;
        Ok(())
    }

    async fn mark_signing_key_used(
        &mut self,
        key_id: &KeyId,
        first_seq: Seq,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE signing_keys SET first_seq = ? WHERE key_id = ? AND first_seq IS NULL")
            .bind(to_i64(first_seq.0))
            .bind(key_id.to_hex())
            .execute(self.tx.conn())
            .await?;
        Ok(())
    }

    async fn record_rotation(
        &mut self,
        old: &KeyId,
        new: &PublicKey,
        seq: Seq,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE signing_keys SET last_seq = ? WHERE key_id = ?")
            .bind(to_i64(seq.0))
            .bind(old.to_hex())
            .execute(self.tx.conn())
            .await?;
        sqlx::query(
            "INSERT INTO signing_keys (key_id, public_key, first_seq, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (key_id) DO UPDATE SET first_seq = excluded.first_seq, last_seq = NULL",
        )
        .bind(new.key_id().to_hex())
        .bind(new.to_bytes().to_vec())
        .bind(to_i64(seq.0 + 1))
        .bind(micros_now())
        .execute(self.tx.conn())
        .await?;
        Ok(())
    }

    async fn idempotency(
        &mut self,
        key_hash: &[u8; 32],
        not_before_micros: i64,
    ) -> Result<Option<IdempotencyRow>, StoreError> {
        idempotency_on(self.tx.conn(), key_hash, not_before_micros).await
    }

    async fn insert_idempotency(&mut self, rows: &[IdempotencyRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(INSERT_CHUNK_ROWS) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO idempotency_keys (key_hash, request_digest, first_seq, last_seq, \
                 created_at) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(r.key_hash.to_vec())
                    .push_bind(r.request_digest.to_vec())
                    .push_bind(to_i64(r.first_seq.0))
                    .push_bind(to_i64(r.last_seq.0))
                    .push_bind(r.created_at_micros);
            });
            qb.push(
                " ON CONFLICT (key_hash) DO UPDATE SET request_digest = excluded.request_digest, \
                 first_seq = excluded.first_seq, last_seq = excluded.last_seq, \
                 created_at = excluded.created_at",
            );
            qb.build().execute(self.tx.conn()).await?;
        }
        Ok(())
    }

    async fn entry_hash_at(&mut self, seq: Seq) -> Result<Option<EntryHash>, StoreError> {
        let row: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, entry_hash FROM entries WHERE seq = ?")
                .bind(to_i64(seq.0))
                .fetch_optional(self.tx.conn())
                .await?;
        row.map(|(s, h)| entry_hash_row(s, &h).map(|(_, h)| h))
            .transpose()
    }

    async fn legal_hold(
        &mut self,
        subject: &SubjectHandle,
    ) -> Result<Option<super::HoldRow>, StoreError> {
        let row: Option<(Vec<u8>, i64, String, i64)> = sqlx::query_as(
            "SELECT subject, hold_seq, reference, placed_at FROM legal_holds WHERE subject = $1",
        )
        .bind(subject.0.to_vec())
        .fetch_optional(self.tx.conn())
        .await?;
        row.map(|(s, q, r, p)| super::HoldRow::decode(&s, q, r, p))
            .transpose()
    }

    async fn insert_legal_hold(&mut self, hold: &super::HoldRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO legal_holds (subject, hold_seq, reference, placed_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(hold.subject.0.to_vec())
        .bind(to_i64(hold.hold_seq.0))
        .bind(&hold.reference)
        .bind(hold.placed_at)
        .execute(self.tx.conn())
        .await?;
        Ok(())
    }

    async fn delete_legal_hold(&mut self, subject: &SubjectHandle) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM legal_holds WHERE subject = $1")
            .bind(subject.0.to_vec())
            .execute(self.tx.conn())
            .await?;
        Ok(())
    }

    async fn write_probe(&mut self) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO write_probe (id, pad) VALUES (1, zeroblob(8192))")
            .execute(self.tx.conn())
            .await?;
        sqlx::query("DELETE FROM write_probe")
            .execute(self.tx.conn())
            .await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await
    }

    async fn rollback(self: Box<Self>) {
        self.tx.rollback().await;
    }
}

async fn idempotency_on<'e, E>(
    executor: E,
    key_hash: &[u8; 32],
    not_before_micros: i64,
) -> Result<Option<IdempotencyRow>, StoreError>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let row: Option<IdempotencyColumns> = sqlx::query_as(
        "SELECT key_hash, request_digest, first_seq, last_seq, created_at FROM idempotency_keys \
         WHERE key_hash = ? AND created_at >= ?",
    )
    .bind(key_hash.to_vec())
    .bind(not_before_micros)
    .fetch_optional(executor)
    .await?;
    row.map(|(k, d, f, l, c)| IdempotencyRow::decode(&k, &d, f, l, c))
        .transpose()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{SqliteStore, Store, WAL_RESTART_FRAMES};

    /// Commits `n` transactions of 64 KB each (16 pages).
    async fn fill(store: &SqliteStore, n: usize) {
        for i in 0..n {
            sqlx::query("INSERT INTO filler (b) VALUES (?)")
                .bind(vec![u8::try_from(i % 251).unwrap(); 64 * 1024])
                .execute(&store.write)
                .await
                .unwrap();
        }
    }

    /// A commit never copies the WAL into the database file (that copy and its fsync would be
    /// on the append path); `checkpoint_wal` does, in the background, and keeps the WAL from
    /// growing for as long as appends go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_is_checkpointed_in_the_background_not_by_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("l.db"), None)
            .await
            .unwrap();
        let auto = || async {
            sqlx::query_scalar::<_, i64>("PRAGMA wal_autocheckpoint")
                .fetch_one(&store.write)
                .await
                .unwrap()
        };
        assert_eq!(
            auto().await,
            1000,
            "SQLite's default until a ledger takes over"
        );
        store.checkpoint_in_background().await.unwrap();
        assert_eq!(
            auto().await,
            0,
            "the writer's connection must not checkpoint"
        );
        sqlx::query("CREATE TABLE filler (b BLOB)")
            .execute(&store.write)
            .await
            .unwrap();
        let size = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().len();
        // 1,600 pages, past SQLite's default of 1,000: no commit copied them.
        fill(&store, 100).await;
        assert!(
            size("l.db") < 1 << 20,
            "{} bytes in the database file",
            size("l.db")
        );
        // A background checkpoint does.
        store.checkpoint_wal().await.unwrap();
        assert!(
            size("l.db") > 6 << 20,
            "{} bytes in the database file",
            size("l.db")
        );

        // Appends that never pause: 4 thresholds' worth (~64 MB) written while checkpoints
        // run beside them; the WAL (whose file keeps its largest size) stays within about
        // two thresholds.
        let writer = {
            let store = store.clone();
            let pages = usize::try_from(WAL_RESTART_FRAMES).unwrap() * 4;
            tokio::spawn(async move { fill(&store, pages / 16).await })
        };
        while !writer.is_finished() {
            store.checkpoint_wal().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        writer.await.unwrap();
        let wal_pages = size("l.db-wal") / 4096;
        assert!(
            wal_pages < u64::try_from(WAL_RESTART_FRAMES).unwrap() * 2,
            "the WAL grew to {wal_pages} pages"
        );
    }
}
