//! PostgreSQL: production storage, shared by any number of service instances.
//!
//! Appends from every instance serialize on one transaction-scoped advisory lock taken first
//! in each append transaction, so the head is read, extended and committed by one writer at a
//! time across the whole cluster and the chain cannot fork; the unique keys on `seq` and
//! `(stream_id, stream_version)` would refuse a fork even if the lock were bypassed. Each
//! instance keeps its own group commit. Bulk inserts use `INSERT … SELECT * FROM UNNEST(…)`.
//! Durability is PostgreSQL's: a commit returns once its WAL is flushed (`synchronous_commit`
//! on, the default; docs/OPERATIONS.md).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

mod epochs;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Row};

use super::epochs::{epoch_row, link_row};
use super::{
    AppendTx, AuditSnapshot, CHECKPOINT_COLUMNS, ChainHead, CheckpointRow, Cleanup, CleanupBlocker,
    ENTRY_COLUMNS, ENTRY_SELECT, EntryRow, ErasureNotices, FilterBind, HEAD_SELECT, MalformedRow,
    SigningKeyRow, Store, StoreError, Tombstone, VaultRow, chain_head, entry_hash_row, erasure_row,
    insert_error, key_refs, malformed_meta, signing_key_row, to_i64, to_u64, vault_row,
};
use super::{EpochRow, ErasureRecord, IdempotencyColumns, IdempotencyRow, LinkRow, TxConn};
use crate::checkpoint::Checkpoint;
use crate::crypto::{KekId, KeyId, KeyRef, PublicKey};
use crate::entry::{EntryHash, LedgerId, Seq, StreamId, SubjectHandle};
use crate::ledger::RowFilter;
use crate::merkle::{MerkleHash, NodeId, leaf_hash};
use crate::record::Record;
use crate::timefmt::now_micros;

/// Advisory lock that serializes appends across instances ("auditled" in ASCII).
const LEDGER_LOCK: i64 = 0x6175_6469_746c_6564;
/// Advisory lock that running servers hold shared and `rotate-kek` takes exclusive.
const SERVE_LOCK: i64 = 0x6175_6469_746b_656b;
/// Rows per UNNEST insert.
const INSERT_CHUNK_ROWS: usize = 5000;
/// The channel on which an erasure's transaction announces the erased handle (hex) to every
/// instance; PostgreSQL delivers it when, and only if, the transaction commits.
const ERASURE_CHANNEL: &str = "auditledger_erasures";
/// Where every commit is announced, so that subscribers on other instances wake at once.
const APPEND_CHANNEL: &str = "auditledger_appends";
/// The tables an erasure deletes rows from, vacuumed once no snapshot can see those rows;
/// the ones that exist in this schema version are vacuumed.
const ERASED_ROW_TABLES: [&str; 3] = ["data_keys", "subject_index", "subject_links"];

super::access::impl_access_store!(PostgresStore, pool, pool);
super::snapshots::impl_snapshot_store!(PostgresStore, pool, pool);
super::subscriptions::impl_subscription_store!(PostgresStore, pool, pool);
super::projections::impl_projection_store!(PostgresStore, pool, pool);

/// `migrations/postgres/*.sql`, in order; a new migration is added here too.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "ledger",
        include_str!("../../migrations/postgres/0001_ledger.sql"),
    ),
    (
        2,
        "subjects",
        include_str!("../../migrations/postgres/0002_subjects.sql"),
    ),
    (
        3,
        "merkle",
        include_str!("../../migrations/postgres/0003_merkle.sql"),
    ),
    (
        4,
        "identity",
        include_str!("../../migrations/postgres/0004_identity.sql"),
    ),
    (
        5,
        "epochs",
        include_str!("../../migrations/postgres/0005_epochs.sql"),
    ),
    (
        6,
        "cleanup",
        include_str!("../../migrations/postgres/0006_cleanup.sql"),
    ),
    (
        7,
        "idempotency",
        include_str!("../../migrations/postgres/0007_idempotency.sql"),
    ),
    (
        8,
        "access",
        include_str!("../../migrations/postgres/0008_access.sql"),
    ),
    (
        9,
        "reads",
        include_str!("../../migrations/postgres/0009_reads.sql"),
    ),
    (
        10,
        "snapshots",
        include_str!("../../migrations/postgres/0010_snapshots.sql"),
    ),
    (
        11,
        "subscriptions",
        include_str!("../../migrations/postgres/0011_subscriptions.sql"),
    ),
    (
        12,
        "projections",
        include_str!("../../migrations/postgres/0012_projections.sql"),
    ),
];

/// The PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    /// This process's name in commit notices: its own are not relayed to its subscribers,
    /// whom the writer wakes itself once a batch is fully landed (its live readers' access
    /// recorded as covered); a notice, sent at COMMIT, could wake them before that.
    instance: Arc<str>,
}

fn malformed(seq: Seq, what: &str) -> StoreError {
    StoreError::Malformed(MalformedRow {
        seq,
        what: what.to_owned(),
    })
}

impl PostgresStore {
    /// Connects with a pool of `pool_size` connections and applies pending migrations.
    pub async fn open(url: &str, pool_size: u32) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("auditledger");
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        sqlx::migrate::Migrator::new(super::Embedded(MIGRATIONS))
            .await?
            .run(&pool)
            .await?;
        Ok(PostgresStore {
            pool,
            instance: format!("{:032x}", rand::random::<u128>()).into(),
        })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Holds the shared "a server is running" lock for as long as the returned connection
    /// lives, so that `rotate-kek` can tell.
    pub async fn hold_serve_lock(
        &self,
    ) -> Result<sqlx::pool::PoolConnection<Postgres>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock_shared($1)")
            .bind(SERVE_LOCK)
            .execute(&mut *conn)
            .await?;
        Ok(conn)
    }

    /// Takes the exclusive "no server is running" lock, or says a server holds it.
    pub async fn try_exclusive_serve_lock(
        &self,
    ) -> Result<Option<sqlx::pool::PoolConnection<Postgres>>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(SERVE_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        Ok(got.then_some(conn))
    }
}

async fn head_on(conn: &mut PgConnection) -> Result<Option<ChainHead>, StoreError> {
    let row = sqlx::query(HEAD_SELECT).fetch_optional(&mut *conn).await?;
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

async fn subject_link_on(
    conn: &mut PgConnection,
    index_mac: &[u8; 32],
) -> Result<Option<LinkRow>, StoreError> {
    let row: Option<(Vec<u8>, Vec<u8>, String)> = sqlx::query_as(
        "SELECT index_mac, sealed_handle, kek_id FROM subject_links WHERE index_mac = $1",
    )
    .bind(index_mac.to_vec())
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|(m, s, k)| link_row(&m, s, k)).transpose()
}

async fn merkle_nodes_on(
    conn: &mut PgConnection,
    ids: &[NodeId],
) -> Result<HashMap<NodeId, MerkleHash>, StoreError> {
    let mut out = HashMap::with_capacity(ids.len());
    let leaf_seqs: Vec<i64> = ids
        .iter()
        .filter(|i| i.level == 0)
        .map(|i| to_i64(i.index))
        .collect();
    let (node_levels, node_indexes): (Vec<i32>, Vec<i64>) = ids
        .iter()
        .filter(|i| i.level > 0)
        .map(|i| (i32::from(i.level), to_i64(i.index)))
        .unzip();
    if !leaf_seqs.is_empty() {
        let rows: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, entry_hash FROM entries WHERE seq = ANY($1)")
                .bind(&leaf_seqs)
                .fetch_all(&mut *conn)
                .await?;
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
    if !node_levels.is_empty() {
        let rows: Vec<(i32, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT m.level, m.idx, m.hash FROM merkle_nodes m \
             JOIN UNNEST($1::int[], $2::bigint[]) AS q(level, idx) ON m.level = q.level AND m.idx = q.idx",
        )
        .bind(&node_levels)
        .bind(&node_indexes)
        .fetch_all(&mut *conn)
        .await?;
        for (level, idx, hash) in rows {
            let hash = <[u8; 32]>::try_from(hash.as_slice())
                .map_err(|_| malformed(Seq(0), &format!("merkle_nodes({level}, {idx})")))?;
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
    conn: &mut PgConnection,
    nodes: &[(NodeId, MerkleHash)],
) -> Result<(), StoreError> {
    for chunk in nodes.chunks(INSERT_CHUNK_ROWS) {
        let levels: Vec<i32> = chunk.iter().map(|(id, _)| i32::from(id.level)).collect();
        let idxs: Vec<i64> = chunk.iter().map(|(id, _)| to_i64(id.index)).collect();
        let hashes: Vec<Vec<u8>> = chunk.iter().map(|(_, h)| h.0.to_vec()).collect();
        sqlx::query(
            "INSERT INTO merkle_nodes (level, idx, hash) \
             SELECT * FROM UNNEST($1::int[], $2::bigint[], $3::bytea[]) ON CONFLICT DO NOTHING",
        )
        .bind(&levels)
        .bind(&idxs)
        .bind(&hashes)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn latest_checkpoint_on(conn: &mut PgConnection) -> Result<Option<Checkpoint>, StoreError> {
    let sql =
        format!("SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY tree_size DESC LIMIT 1");
    let row: Option<CheckpointRow> = sqlx::query_as(&sql).fetch_optional(&mut *conn).await?;
    Ok(row.map(CheckpointRow::into_checkpoint).transpose()?)
}

#[async_trait]
impl Store for PostgresStore {
    async fn begin_append(&self) -> Result<Box<dyn AppendTx>, StoreError> {
        let mut tx = TxConn::begin(&self.pool, "BEGIN").await?;
        // Held until commit or rollback: appends from every instance take turns here.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LEDGER_LOCK)
            .execute(tx.conn())
            .await?;
        Ok(Box::new(PgAppendTx {
            tx,
            instance: Arc::clone(&self.instance),
        }))
    }

    async fn begin_snapshot(&self) -> Result<Box<dyn AppendTx>, StoreError> {
        // No advisory lock: reads only, trusted after the head is checked under the lock.
        let tx = TxConn::begin(&self.pool, "BEGIN").await?;
        Ok(Box::new(PgAppendTx {
            tx,
            instance: Arc::clone(&self.instance),
        }))
    }

    async fn head(&self) -> Result<Option<ChainHead>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        head_on(&mut conn).await
    }

    async fn idempotency(
        &self,
        key_hash: &[u8; 32],
        not_before_micros: i64,
    ) -> Result<Option<IdempotencyRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        idempotency_on(&mut conn, key_hash, not_before_micros).await
    }

    async fn purge_idempotency(&self, before_micros: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(before_micros)
            .execute(&self.pool)
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
            "SELECT {ENTRY_SELECT} FROM entries WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3"
        );
        Ok(sqlx::query_as::<_, EntryRow>(&sql)
            .bind(to_i64(from.0))
            .bind(to.map_or(i64::MAX, |t| to_i64(t.0)))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn entry_hashes(
        &self,
        from: Seq,
        to: Seq,
        limit: u32,
    ) -> Result<Vec<(Seq, EntryHash)>, StoreError> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, entry_hash FROM entries WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3",
        )
        .bind(to_i64(from.0))
        .bind(to_i64(to.0))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
            "SELECT {ENTRY_SELECT} FROM entries WHERE stream_id = $1 AND stream_version >= $2 \
             ORDER BY stream_version LIMIT $3"
        );
        Ok(sqlx::query_as::<_, EntryRow>(&sql)
            .bind(stream.as_str())
            .bind(to_i64(from_version))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn read_filtered(&self, filter: &RowFilter) -> Result<Vec<EntryRow>, StoreError> {
        let (tail, binds) = super::filtered_sql(filter, |n| format!("${n}"));
        let sql = format!("SELECT {ENTRY_SELECT} FROM entries {tail}");
        let mut query = sqlx::query_as::<_, EntryRow>(&sql);
        for b in binds {
            query = match b {
                FilterBind::Text(t) => query.bind(t),
                FilterBind::Int(i) => query.bind(i),
            };
        }
        Ok(query.fetch_all(&self.pool).await?)
    }

    async fn compensating(
        &self,
        stream: &StreamId,
        from: Seq,
    ) -> Result<Vec<(Seq, String)>, StoreError> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT seq, metadata FROM entries WHERE stream_id = $1 AND seq >= $2 \
             AND metadata LIKE '%\"auditledger:%' ORDER BY seq",
        )
        .bind(stream.as_str())
        .bind(to_i64(from.0))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(s, m)| (Seq(to_u64(s)), m)).collect())
    }

    async fn seq_recorded_from(&self, micros: i64) -> Result<u64, StoreError> {
        let seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM entries WHERE recorded_at >= $1 \
             ORDER BY recorded_at, seq LIMIT 1), (SELECT COALESCE(MAX(seq) + 1, 0) FROM entries))",
        )
        .bind(micros)
        .fetch_one(&self.pool)
        .await?;
        Ok(to_u64(seq))
    }

    async fn vault_key(&self, key_ref: &KeyRef) -> Result<Option<VaultRow>, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>, String)> =
            sqlx::query_as("SELECT key_ref, wrapped, kek_id FROM data_keys WHERE key_ref = $1")
                .bind(key_ref.to_bytes().to_vec())
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(r, w, k)| vault_row(&r, w, k)).transpose()
    }

    async fn system_key(&self) -> Result<Option<VaultRow>, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>, String)> = sqlx::query_as(
            "SELECT key_ref, wrapped, kek_id FROM data_keys WHERE get_byte(key_ref, 0) = 0 \
             ORDER BY created_at, key_ref LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(r, w, k)| vault_row(&r, w, k)).transpose()
    }

    async fn insert_vault_key(&self, row: &VaultRow, kek_id: &KekId) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO data_keys (key_ref, wrapped, kek_id, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key_ref) DO NOTHING",
        )
        .bind(row.key_ref.to_bytes().to_vec())
        .bind(row.wrapped.0.clone())
        .bind(kek_id.to_hex())
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRow>, StoreError> {
        let rows: Vec<(String, Vec<u8>, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT key_id, public_key, first_seq, last_seq FROM signing_keys \
             ORDER BY first_seq NULLS LAST, created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, pk, first, last)| signing_key_row(&id, &pk, first, last))
            .collect()
    }

    async fn publish_signing_key(&self, key: &PublicKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (key_id, public_key, first_seq, created_at) \
             VALUES ($1, $2, NULL, $3) ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(key.key_id().to_hex())
        .bind(key.to_bytes().to_vec())
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn read_subject(
        &self,
        handle: &SubjectHandle,
        from: Seq,
        limit: u32,
    ) -> Result<Vec<EntryRow>, StoreError> {
        let sql = format!(
            "SELECT {ENTRY_SELECT} FROM entries WHERE subject = $1 AND seq >= $2 ORDER BY seq LIMIT $3"
        );
        Ok(sqlx::query_as::<_, EntryRow>(&sql)
            .bind(handle.0.to_vec())
            .bind(to_i64(from.0))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn subject_link(&self, index_mac: &[u8; 32]) -> Result<Option<LinkRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        subject_link_on(&mut conn, index_mac).await
    }

    async fn tombstones(
        &self,
        after: Option<&[u8; 32]>,
        limit: u32,
    ) -> Result<Vec<([u8; 32], Tombstone)>, StoreError> {
        let rows: Vec<(Vec<u8>, Vec<u8>, String)> = sqlx::query_as(
            "SELECT tombstone_mac, sealed_receipt, kek_id FROM erasure_tombstones \
             WHERE tombstone_mac > $1 ORDER BY tombstone_mac LIMIT $2",
        )
        .bind(after.map(|a| a.to_vec()).unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
        sqlx::query("DELETE FROM erasure_tombstones WHERE tombstone_mac = $1")
            .bind(tombstone_mac.to_vec())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn clean_after_erasures(&self) -> Result<Cleanup, StoreError> {
        let mut conn = self.pool.acquire().await?;
        // A missing cleanup_xid (never written by this version) counts as "now".
        let pending: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT erasure_seq, COALESCE(cleanup_xid, txid_snapshot_xmax(txid_current_snapshot())) \
             FROM erased_subjects WHERE cleaned_at IS NULL ORDER BY erasure_seq",
        )
        .fetch_all(&mut *conn)
        .await?;
        if pending.is_empty() {
            return Ok(Cleanup::Idle);
        }
        let holders = horizon_holders(&mut conn).await?;
        // An erasure is clean once every snapshot, transaction, slot and prepared transaction
        // left is younger than it: none of them can see the deleted rows, so VACUUM removes
        // them.
        let (clean, blocked): (Vec<_>, Vec<_>) = pending
            .iter()
            .partition(|(_, xid)| holders.iter().all(|h| xid_precedes(xid32(*xid), h.xid)));
        if clean.is_empty() {
            let first = xid32(pending[0].1);
            // Always found: the first pending erasure is held back by someone.
            if let Some(oldest) = holders
                .into_iter()
                .filter(|h| !xid_precedes(first, h.xid))
                .max_by_key(|h| h.age)
            {
                return Ok(Cleanup::Blocked {
                    pending: pending.len() as u64,
                    by: oldest.what,
                });
            }
        }
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(t) IS NOT NULL",
        )
        .bind(ERASED_ROW_TABLES.map(str::to_owned).to_vec())
        .fetch_all(&mut *conn)
        .await?;
        if !tables.is_empty() {
            // Plain VACUUM: it takes no lock that appends or reads wait for. (VACUUM FULL
            // would rewrite the tables under an exclusive lock, stalling every append that
            // creates a subject; the dead tuples' bytes it would also remove are left to the
            // KEK epoch, which makes every copy of a wrapped key useless.)
            sqlx::query(&format!("VACUUM {}", tables.join(", ")))
                .execute(&mut *conn)
                .await?;
        }
        let seqs: Vec<i64> = clean.iter().map(|(seq, _)| *seq).collect();
        let marked = sqlx::query(
            "UPDATE erased_subjects SET cleaned_at = $1 \
             WHERE erasure_seq = ANY($2) AND cleaned_at IS NULL",
        )
        .bind(now_micros())
        .bind(&seqs)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        Ok(Cleanup::Cleaned {
            erasures: marked,
            remaining: blocked.len() as u64,
        })
    }

    async fn erasures_after(
        &self,
        after: Option<Seq>,
        limit: u32,
    ) -> Result<Vec<(Seq, SubjectHandle)>, StoreError> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT erasure_seq, handle FROM erased_subjects WHERE erasure_seq > $1 \
             ORDER BY erasure_seq LIMIT $2",
        )
        .bind(after.map_or(-1, |s| to_i64(s.0)))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|(seq, h)| erasure_row(*seq, h)).collect()
    }

    async fn erasure_notices(&self) -> Result<Option<Box<dyn ErasureNotices>>, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(ERASURE_CHANNEL).await?;
        Ok(Some(Box::new(PgErasureNotices { listener })))
    }

    async fn append_notices(&self) -> Result<Option<Box<dyn super::AppendNotices>>, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(APPEND_CHANNEL).await?;
        Ok(Some(Box::new(PgAppendNotices {
            listener,
            own: Arc::clone(&self.instance),
        })))
    }

    fn shared(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn merkle_nodes(
        &self,
        ids: &[NodeId],
    ) -> Result<HashMap<NodeId, MerkleHash>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        merkle_nodes_on(&mut conn, ids).await
    }

    async fn insert_merkle_nodes(&self, nodes: &[(NodeId, MerkleHash)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_merkle_nodes_on(&mut tx, nodes).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        latest_checkpoint_on(&mut conn).await
    }

    async fn checkpoints(
        &self,
        from_size: u64,
        to_size: u64,
        limit: u32,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE tree_size >= $1 AND tree_size <= $2 \
             ORDER BY tree_size LIMIT $3"
        );
        let rows: Vec<CheckpointRow> = sqlx::query_as(&sql)
            .bind(to_i64(from_size))
            .bind(to_i64(to_size))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| r.into_checkpoint().map_err(StoreError::from))
            .collect()
    }

    async fn audit_snapshot(&self) -> Result<AuditSnapshot, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let latest_checkpoint = latest_checkpoint_on(&mut tx).await?;
        let head = head_on(&mut tx).await?;
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
                .fetch_optional(&self.pool)
                .await?;
        v.map(|v| LedgerId::from_slice(&v).map_err(|_| malformed_meta()))
            .transpose()
    }

    async fn init_ledger_id(&self, id: &LedgerId) -> Result<LedgerId, StoreError> {
        sqlx::query(
            "INSERT INTO ledger_meta (name, value) VALUES ('ledger_id', $1) ON CONFLICT (name) DO NOTHING",
        )
        .bind(id.0.to_vec())
        .execute(&self.pool)
        .await?;
        self.ledger_id().await?.ok_or_else(malformed_meta)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// Commit notices on a LISTEN connection (sqlx re-makes it when it drops).
struct PgAppendNotices {
    listener: PgListener,
    /// This instance's name: its own commits' notices are skipped.
    own: Arc<str>,
}

#[async_trait]
impl super::AppendNotices for PgAppendNotices {
    async fn next(&mut self) -> Result<(), StoreError> {
        loop {
            let notice = self.listener.recv().await?;
            if notice.payload() != self.own.as_ref() {
                return Ok(());
            }
        }
    }
}

/// Erasure notices on a LISTEN connection, which sqlx re-makes (and re-LISTENs) when it drops.
struct PgErasureNotices {
    listener: PgListener,
}

#[async_trait]
impl ErasureNotices for PgErasureNotices {
    async fn next(&mut self) -> Result<SubjectHandle, StoreError> {
        loop {
            let notice = self.listener.recv().await?;
            if let Ok(handle) = SubjectHandle::from_hex(notice.payload()) {
                return Ok(handle);
            }
            // Anyone with access to the database may NOTIFY; the poll still covers us.
            tracing::warn!("ignoring a malformed erasure notice");
        }
    }
}

/// Something that holds PostgreSQL's removal horizon back: VACUUM keeps every row version
/// that a transaction id at or after `xid` might still see.
struct HorizonHolder {
    xid: u32,
    age: i64,
    what: CleanupBlocker,
}

/// A `pg_stat_activity` row holding a snapshot or a transaction id.
struct SessionRow {
    pid: i32,
    backend_type: Option<String>,
    xmin: Option<i64>,
    xid: Option<i64>,
    xmin_age: Option<i32>,
    xid_age: Option<i32>,
    transaction_secs: Option<i64>,
}

super::from_row!(SessionRow {
    pid: i32,
    backend_type: Option<String>,
    xmin: Option<i64>,
    xid: Option<i64>,
    xmin_age: Option<i32>,
    xid_age: Option<i32>,
    transaction_secs: Option<i64>,
});

/// A `pg_replication_slots` row.
struct SlotRow {
    name: String,
    xmin: Option<i64>,
    xmin_age: Option<i32>,
    catalog_xmin: Option<i64>,
    catalog_age: Option<i32>,
}

super::from_row!(SlotRow {
    name: String,
    xmin: Option<i64>,
    xmin_age: Option<i32>,
    catalog_xmin: Option<i64>,
    catalog_age: Option<i32>,
});

/// Sessions of this database (and WAL senders, whose standbys may feed back their snapshots),
/// replication slots and prepared transactions, each with the oldest transaction id it holds.
async fn horizon_holders(conn: &mut PgConnection) -> Result<Vec<HorizonHolder>, StoreError> {
    let mut out = Vec::new();
    let sessions: Vec<SessionRow> = sqlx::query_as(
        "SELECT pid, backend_type, backend_xmin::text::bigint AS xmin, \
                backend_xid::text::bigint AS xid, age(backend_xmin) AS xmin_age, \
                age(backend_xid) AS xid_age, \
                EXTRACT(EPOCH FROM now() - xact_start)::bigint AS transaction_secs \
         FROM pg_stat_activity \
         WHERE pid <> pg_backend_pid() \
           AND (datname = current_database() OR backend_type = 'walsender') \
           AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)",
    )
    .fetch_all(&mut *conn)
    .await?;
    for SessionRow {
        pid,
        backend_type,
        xmin,
        xid,
        xmin_age,
        xid_age,
        transaction_secs,
    } in sessions
    {
        let held = [(xmin, xmin_age), (xid, xid_age)]
            .into_iter()
            .filter_map(|(x, a)| Some((xid32(x?), i64::from(a.unwrap_or(0)))))
            .max_by_key(|(_, a)| *a);
        if let Some((xid, age)) = held {
            out.push(HorizonHolder {
                xid,
                age,
                what: CleanupBlocker::Backend {
                    pid,
                    backend_type: backend_type.unwrap_or_default(),
                    xmin_age: age,
                    transaction_secs: transaction_secs.unwrap_or(0),
                },
            });
        }
    }
    let slots: Vec<SlotRow> = sqlx::query_as(
        "SELECT slot_name::text AS name, xmin::text::bigint AS xmin, age(xmin) AS xmin_age, \
                catalog_xmin::text::bigint AS catalog_xmin, age(catalog_xmin) AS catalog_age \
         FROM pg_replication_slots \
         WHERE database IS NULL OR database = current_database()",
    )
    .fetch_all(&mut *conn)
    .await?;
    for SlotRow {
        name,
        xmin,
        xmin_age,
        catalog_xmin,
        catalog_age,
    } in slots
    {
        for (x, a) in [(xmin, xmin_age), (catalog_xmin, catalog_age)] {
            if let Some(x) = x {
                out.push(HorizonHolder {
                    xid: xid32(x),
                    age: i64::from(a.unwrap_or(0)),
                    what: CleanupBlocker::ReplicationSlot { name: name.clone() },
                });
            }
        }
    }
    let prepared: Vec<(String, i64, i32)> = sqlx::query_as(
        "SELECT gid, transaction::text::bigint, age(transaction) FROM pg_prepared_xacts \
         WHERE database = current_database()",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (gid, xid, age) in prepared {
        out.push(HorizonHolder {
            xid: xid32(xid),
            age: i64::from(age),
            what: CleanupBlocker::PreparedTransaction { gid },
        });
    }
    Ok(out)
}

/// The 32-bit transaction id PostgreSQL's system views show, of a 64-bit `txid_current()`.
fn xid32(xid: i64) -> u32 {
    u32::try_from(xid & 0xffff_ffff).unwrap_or(0)
}

/// Whether `a` is older than `b`, in PostgreSQL's circular transaction-id order
/// (`TransactionIdPrecedes`: modulo 2^32, within 2^31 of each other).
fn xid_precedes(a: u32, b: u32) -> bool {
    a.wrapping_sub(b).cast_signed() < 0
}

struct PgAppendTx {
    tx: TxConn<Postgres>,
    /// The notice its commit sends: the instance's name.
    instance: Arc<str>,
}

#[async_trait]
impl AppendTx for PgAppendTx {
    async fn head(&mut self) -> Result<Option<ChainHead>, StoreError> {
        head_on(self.tx.conn()).await
    }

    async fn stream_version(&mut self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT MAX(stream_version) FROM entries WHERE stream_id = $1")
                .bind(stream.as_str())
                .fetch_one(self.tx.conn())
                .await?;
        Ok(v.map(to_u64))
    }

    async fn stream_versions(
        &mut self,
        streams: &[StreamId],
    ) -> Result<HashMap<StreamId, u64>, StoreError> {
        let names: Vec<&str> = streams.iter().map(StreamId::as_str).collect();
        // One scalar subquery per stream, each a backward index probe.
        let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
            "SELECT s, (SELECT MAX(stream_version) FROM entries WHERE stream_id = s) \
             FROM unnest($1::text[]) AS s",
        )
        .bind(&names)
        .fetch_all(self.tx.conn())
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(stream, v)| {
                let v = v?;
                streams
                    .iter()
                    .find(|s| s.as_str() == stream)
                    .map(|id| (id.clone(), to_u64(v)))
            })
            .collect())
    }

    async fn subject_links(
        &mut self,
        index_macs: &[[u8; 32]],
    ) -> Result<HashMap<[u8; 32], LinkRow>, StoreError> {
        let macs: Vec<Vec<u8>> = index_macs.iter().map(|m| m.to_vec()).collect();
        let rows: Vec<(Vec<u8>, Vec<u8>, String)> = sqlx::query_as(
            "SELECT index_mac, sealed_handle, kek_id FROM subject_links WHERE index_mac = ANY($1)",
        )
        .bind(&macs)
        .fetch_all(self.tx.conn())
        .await?;
        rows.into_iter()
            .map(|(m, sealed, kek)| link_row(&m, sealed, kek).map(|l| (l.index_mac, l)))
            .collect()
    }

    async fn insert(&mut self, records: &[Record]) -> Result<(), StoreError> {
        for chunk in records.chunks(INSERT_CHUNK_ROWS) {
            let mut seq = Vec::with_capacity(chunk.len());
            let mut stream = Vec::with_capacity(chunk.len());
            let mut version = Vec::with_capacity(chunk.len());
            let mut ty = Vec::with_capacity(chunk.len());
            let mut schema = Vec::with_capacity(chunk.len());
            let mut subject: Vec<Option<Vec<u8>>> = Vec::with_capacity(chunk.len());
            let mut at = Vec::with_capacity(chunk.len());
            let mut meta = Vec::with_capacity(chunk.len());
            let mut payload: Vec<Option<Vec<u8>>> = Vec::with_capacity(chunk.len());
            let mut digest = Vec::with_capacity(chunk.len());
            let mut prev = Vec::with_capacity(chunk.len());
            let mut hash = Vec::with_capacity(chunk.len());
            let mut sig = Vec::with_capacity(chunk.len());
            let mut key = Vec::with_capacity(chunk.len());
            let mut ledger: Vec<Option<Vec<u8>>> = Vec::with_capacity(chunk.len());
            for r in chunk {
                let h = &r.entry.header;
                seq.push(to_i64(h.seq.0));
                stream.push(h.stream_id.as_str().to_owned());
                version.push(to_i64(h.stream_version));
                ty.push(h.event_type.as_str().to_owned());
                schema.push(i64::from(h.schema_version));
                subject.push(h.subject.map(|s| s.0.to_vec()));
                at.push(h.recorded_at_micros);
                meta.push(serde_json::to_string(&h.metadata).unwrap_or_default());
                payload.push(r.payload.as_ref().map(|p| p.0.clone()));
                digest.push(r.entry.payload_digest.0.to_vec());
                prev.push(r.entry.prev_hash.0.to_vec());
                hash.push(r.entry_hash.0.to_vec());
                sig.push(r.signature.0.to_vec());
                key.push(r.key_id.to_hex());
                ledger.push(h.ledger_id.map(|l| l.0.to_vec()));
            }
            let sql = format!(
                "INSERT INTO entries ({ENTRY_COLUMNS}) SELECT * FROM UNNEST(\
                 $1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::bytea[], \
                 $7::bigint[], $8::text[], $9::bytea[], $10::bytea[], $11::bytea[], $12::bytea[], \
                 $13::bytea[], $14::text[], $15::bytea[])"
            );
            sqlx::query(&sql)
                .bind(&seq)
                .bind(&stream)
                .bind(&version)
                .bind(&ty)
                .bind(&schema)
                .bind(&subject)
                .bind(&at)
                .bind(&meta)
                .bind(&payload)
                .bind(&digest)
                .bind(&prev)
                .bind(&hash)
                .bind(&sig)
                .bind(&key)
                .bind(&ledger)
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
             WHERE destroyed_at IS NULL ORDER BY epoch DESC LIMIT 1 FOR SHARE",
        )
        .fetch_optional(self.tx.conn())
        .await?;
        row.map(|(e, k, s, r, d)| epoch_row(e, k, s, r, d))
            .transpose()
    }

    async fn insert_subject(&mut self, link: &LinkRow, key: &VaultRow) -> Result<(), StoreError> {
        let now = now_micros();
        sqlx::query(
            "INSERT INTO subject_links (index_mac, sealed_handle, kek_id) VALUES ($1, $2, $3)",
        )
        .bind(link.index_mac.to_vec())
        .bind(link.sealed_handle.clone())
        .bind(&link.kek_id)
        .execute(self.tx.conn())
        .await?;
        sqlx::query(
            "INSERT INTO data_keys (key_ref, wrapped, kek_id, created_at) VALUES ($1, $2, $3, $4)",
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
        sqlx::query("DELETE FROM data_keys WHERE key_ref = $1")
            .bind(KeyRef::Subject(*handle).to_bytes().to_vec())
            .execute(self.tx.conn())
            .await?;
        sqlx::query("DELETE FROM subject_links WHERE index_mac = $1")
            .bind(index_mac.to_vec())
            .execute(self.tx.conn())
            .await?;
        sqlx::query(
            "INSERT INTO erased_subjects (handle, erasure_seq, erased_at, request_ref, epoch, \
             forgotten_by, receipt_key_id, receipt_signature) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
        // Every instance drops the key from its cache when this commits (cleanup_xid is set
        // by its column default, in this transaction).
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(ERASURE_CHANNEL)
            .bind(handle.to_hex())
            .execute(self.tx.conn())
            .await?;
        Ok(())
    }

    async fn tombstone(
        &mut self,
        tombstone_mac: &[u8; 32],
    ) -> Result<Option<Tombstone>, StoreError> {
        let row: Option<(Vec<u8>, String)> = sqlx::query_as(
            "SELECT sealed_receipt, kek_id FROM erasure_tombstones WHERE tombstone_mac = $1",
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
            "INSERT INTO erasure_tombstones (tombstone_mac, sealed_receipt, kek_id) \
             VALUES ($1, $2, $3) ON CONFLICT (tombstone_mac) DO UPDATE SET \
             sealed_receipt = EXCLUDED.sealed_receipt, kek_id = EXCLUDED.kek_id",
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
            "INSERT INTO checkpoints ({CHECKPOINT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
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
        sqlx::query(
            "UPDATE signing_keys SET first_seq = $1 WHERE key_id = $2 AND first_seq IS NULL",
        )
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
        sqlx::query("UPDATE signing_keys SET last_seq = $1 WHERE key_id = $2")
            .bind(to_i64(seq.0))
            .bind(old.to_hex())
            .execute(self.tx.conn())
            .await?;
        sqlx::query(
            "INSERT INTO signing_keys (key_id, public_key, first_seq, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key_id) DO UPDATE SET first_seq = excluded.first_seq, last_seq = NULL",
        )
        .bind(new.key_id().to_hex())
        .bind(new.to_bytes().to_vec())
        .bind(to_i64(seq.0 + 1))
        .bind(now_micros())
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
        if rows.is_empty() {
            return Ok(());
        }
        // One statement per batch, whatever its number of keyed appends.
        let keys: Vec<Vec<u8>> = rows.iter().map(|r| r.key_hash.to_vec()).collect();
        let digests: Vec<Vec<u8>> = rows.iter().map(|r| r.request_digest.to_vec()).collect();
        let first: Vec<i64> = rows.iter().map(|r| to_i64(r.first_seq.0)).collect();
        let last: Vec<i64> = rows.iter().map(|r| to_i64(r.last_seq.0)).collect();
        let at: Vec<i64> = rows.iter().map(|r| r.created_at_micros).collect();
        sqlx::query(
            "INSERT INTO idempotency_keys (key_hash, request_digest, first_seq, last_seq, \
             created_at) SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::int8[], $4::int8[], \
             $5::int8[]) ON CONFLICT (key_hash) DO UPDATE SET \
             request_digest = excluded.request_digest, first_seq = excluded.first_seq, \
             last_seq = excluded.last_seq, created_at = excluded.created_at",
        )
        .bind(keys)
        .bind(digests)
        .bind(first)
        .bind(last)
        .bind(at)
        .execute(self.tx.conn())
        .await?;
        Ok(())
    }

    async fn entry_hash_at(&mut self, seq: Seq) -> Result<Option<EntryHash>, StoreError> {
        let row: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, entry_hash FROM entries WHERE seq = $1")
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
        sqlx::query(
            "INSERT INTO write_probe (id, pad) VALUES (1, decode(repeat('00', 8192), 'hex'))",
        )
        .execute(self.tx.conn())
        .await?;
        sqlx::query("DELETE FROM write_probe")
            .execute(self.tx.conn())
            .await?;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        // Delivered at commit, to every other instance's subscribers (nothing if it rolls
        // back), naming this instance.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(APPEND_CHANNEL)
            .bind(self.instance.as_ref())
            .execute(self.tx.conn())
            .await?;
        self.tx.commit().await
    }

    async fn rollback(self: Box<Self>) {
        self.tx.rollback().await;
    }
}

async fn idempotency_on(
    conn: &mut PgConnection,
    key_hash: &[u8; 32],
    not_before_micros: i64,
) -> Result<Option<IdempotencyRow>, StoreError> {
    let row: Option<IdempotencyColumns> = sqlx::query_as(
        "SELECT key_hash, request_digest, first_seq, last_seq, created_at FROM idempotency_keys \
         WHERE key_hash = $1 AND created_at >= $2",
    )
    .bind(key_hash.to_vec())
    .bind(not_before_micros)
    .fetch_optional(conn)
    .await?;
    row.map(|(k, d, f, l, c)| IdempotencyRow::decode(&k, &d, f, l, c))
        .transpose()
}
