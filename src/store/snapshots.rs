//! Aggregate snapshots beside the chain (`crate::snapshot` says how they are sealed). Not part
//! of the ledger: rows here may be deleted or rebuilt at any time, and a row that does not open
//! is ignored.

use super::StoreError;

/// How many snapshots of one stream are kept (the newest).
pub const KEPT_PER_STREAM: i64 = 3;

/// Storage of snapshots.
#[async_trait::async_trait]
pub trait SnapshotStore {
    /// Stores (or replaces) the snapshot of `stream` at `version` and drops all but the newest
    /// [`KEPT_PER_STREAM`] of the stream.
    async fn put_snapshot(
        &self,
        stream: &str,
        version: u64,
        sealed: &[u8],
        keys: &[u8],
        created_at: i64,
    ) -> Result<(), StoreError>;

    /// Up to `limit` snapshots of `stream` at or before `version`, newest first, as
    /// `(version, sealed, keys)`.
    async fn snapshots_before(
        &self,
        stream: &str,
        version: u64,
        limit: i64,
    ) -> Result<Vec<(u64, Vec<u8>, Vec<u8>)>, StoreError>;
}

/// Implements [`SnapshotStore`] for a store whose pools for reading and writing are the named
/// fields.
macro_rules! impl_snapshot_store {
    ($ty:ty, $read:ident, $write:ident) => {
        #[async_trait::async_trait]
        impl $crate::store::snapshots::SnapshotStore for $ty {
            async fn put_snapshot(
                &self,
                stream: &str,
                version: u64,
                sealed: &[u8],
                keys: &[u8],
                created_at: i64,
            ) -> Result<(), $crate::store::StoreError> {
                let mut tx = self.$write.begin().await?;
                sqlx::query(
                    "INSERT INTO snapshots (stream_id, stream_version, sealed, keys, created_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (stream_id, stream_version) \
                     DO UPDATE SET sealed = excluded.sealed, keys = excluded.keys, \
                     created_at = excluded.created_at",
                )
                .bind(stream)
                .bind($crate::store::to_i64(version))
                .bind(sealed)
                .bind(keys)
                .bind(created_at)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "DELETE FROM snapshots WHERE stream_id = $1 AND stream_version < \
                     (SELECT MIN(v) FROM (SELECT stream_version AS v FROM snapshots \
                      WHERE stream_id = $1 ORDER BY stream_version DESC LIMIT $2) AS newest)",
                )
                .bind(stream)
                .bind($crate::store::snapshots::KEPT_PER_STREAM)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn snapshots_before(
                &self,
                stream: &str,
                version: u64,
                limit: i64,
            ) -> Result<Vec<(u64, Vec<u8>, Vec<u8>)>, $crate::store::StoreError> {
                let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
                    "SELECT stream_version, sealed, keys FROM snapshots WHERE stream_id = $1 \
                     AND stream_version <= $2 ORDER BY stream_version DESC LIMIT $3",
                )
                .bind(stream)
                .bind($crate::store::to_i64(version))
                .bind(limit)
                .fetch_all(&self.$read)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(v, s, k)| ($crate::store::to_u64(v), s, k))
                    .collect())
            }
        }
    };
}

pub(crate) use impl_snapshot_store;
