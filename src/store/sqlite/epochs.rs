//! [`EpochStore`] on SQLite. One connection writes, so a transaction here never interleaves
//! with an append: the writer's read of the current epoch and a destruction are serialised.

use async_trait::async_trait;

use super::SqliteStore;
use crate::entry::Seq;
use crate::store::TxConn;
use crate::store::epochs::{
    ERASURE_COLUMNS, ErasureCols, epoch_row, erasure_row, legacy_row, link_row,
};
use crate::store::{
    EpochRow, EpochStore, ErasureRow, LinkRow, StoreError, VaultRow, to_i64, to_u64, vault_row,
};

#[async_trait]
impl EpochStore for SqliteStore {
    async fn kek_epochs(&self) -> Result<Vec<EpochRow>, StoreError> {
        let rows: Vec<(i64, String, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT epoch, kek_id, started_at, rotate_by, destroyed_at FROM kek_epochs ORDER BY epoch",
        )
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(e, k, s, r, d)| epoch_row(e, k, s, r, d))
            .collect()
    }

    async fn insert_epoch(&self, row: &EpochRow) -> Result<EpochRow, StoreError> {
        let mut tx = TxConn::begin(&self.write, "BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO kek_epochs (epoch, kek_id, started_at, rotate_by) VALUES (?, ?, ?, ?) \
             ON CONFLICT (epoch) DO NOTHING",
        )
        .bind(i64::from(row.epoch))
        .bind(&row.kek_id)
        .bind(row.started_at)
        .bind(row.rotate_by)
        .execute(tx.conn())
        .await?;
        let (epoch, kek_id, started, rotate_by, destroyed): (i64, String, i64, i64, Option<i64>) =
            sqlx::query_as(
            "SELECT epoch, kek_id, started_at, rotate_by, destroyed_at FROM kek_epochs WHERE epoch = ?",
        )
        .bind(i64::from(row.epoch))
        .fetch_one(tx.conn())
        .await?;
        tx.commit().await?;
        epoch_row(epoch, kek_id, started, rotate_by, destroyed)
    }

    async fn take_rotation_lease(
        &self,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO kek_rotation_lease (id, holder, expires_at) VALUES (1, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE kek_rotation_lease.holder = excluded.holder OR kek_rotation_lease.expires_at <= ?",
        )
        .bind(holder)
        .bind(until)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn keys_not_under(
        &self,
        kek_id: &str,
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<VaultRow>, StoreError> {
        let rows: Vec<(Vec<u8>, Vec<u8>, String)> = sqlx::query_as(
            "SELECT key_ref, wrapped, kek_id FROM data_keys WHERE key_ref > ? AND kek_id <> ? \
             ORDER BY key_ref LIMIT ?",
        )
        .bind(after.unwrap_or_default().to_vec())
        .bind(kek_id)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(r, w, k)| vault_row(&r, w, k))
            .collect()
    }

    async fn links_not_under(
        &self,
        kek_id: &str,
        after: Option<&[u8; 32]>,
        limit: u32,
    ) -> Result<Vec<LinkRow>, StoreError> {
        let rows: Vec<(Vec<u8>, Vec<u8>, String)> = sqlx::query_as(
            "SELECT index_mac, sealed_handle, kek_id FROM subject_links \
             WHERE index_mac > ? AND kek_id <> ? ORDER BY index_mac LIMIT ?",
        )
        .bind(after.map(|a| a.to_vec()).unwrap_or_default())
        .bind(kek_id)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|(m, s, k)| link_row(&m, s, k))
            .collect()
    }

    async fn rewrap(
        &self,
        keys: &[(VaultRow, String)],
        links: &[(LinkRow, String)],
    ) -> Result<u64, StoreError> {
        let mut tx = TxConn::begin(&self.write, "BEGIN IMMEDIATE").await?;
        let mut changed = 0;
        for (row, old) in keys {
            changed += sqlx::query(
                "UPDATE data_keys SET wrapped = ?, kek_id = ? WHERE key_ref = ? AND kek_id = ?",
            )
            .bind(row.wrapped.0.clone())
            .bind(&row.kek_id)
            .bind(row.key_ref.to_bytes().to_vec())
            .bind(old)
            .execute(tx.conn())
            .await?
            .rows_affected();
        }
        for (link, old) in links {
            changed += sqlx::query(
                "UPDATE subject_links SET sealed_handle = ?, kek_id = ? WHERE index_mac = ? AND kek_id = ?",
            )
            .bind(link.sealed_handle.clone())
            .bind(&link.kek_id)
            .bind(link.index_mac.to_vec())
            .bind(old)
            .execute(tx.conn())
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn count_not_under(&self, kek_id: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM data_keys WHERE kek_id <> ?) \
                  + (SELECT count(*) FROM subject_links WHERE kek_id <> ?)",
        )
        .bind(kek_id)
        .bind(kek_id)
        .fetch_one(&self.read)
        .await?;
        Ok(to_u64(n))
    }

    async fn delete_tombstones_not_under(&self, kek_id: &str) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM erasure_tombstones WHERE kek_id <> ?")
            .bind(kek_id)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected())
    }

    async fn destroy_epoch(&self, epoch: u32, now: i64) -> Result<bool, StoreError> {
        let mut tx = TxConn::begin(&self.write, "BEGIN IMMEDIATE").await?;
        let kek_id: Option<String> =
            sqlx::query_scalar("SELECT kek_id FROM kek_epochs WHERE epoch = ?")
                .bind(i64::from(epoch))
                .fetch_optional(tx.conn())
                .await?;
        let Some(kek_id) = kek_id else {
            return Ok(false);
        };
        let live: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM data_keys WHERE kek_id = ?1) \
                  + (SELECT count(*) FROM subject_links WHERE kek_id = ?1) \
                  + (SELECT count(*) FROM erasure_tombstones WHERE kek_id = ?1)",
        )
        .bind(&kek_id)
        .fetch_one(tx.conn())
        .await?;
        if live > 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE kek_epochs SET destroyed_at = ? WHERE epoch = ? AND destroyed_at IS NULL",
        )
        .bind(now)
        .bind(i64::from(epoch))
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn legacy_index_rows(
        &self,
        limit: u32,
    ) -> Result<Vec<([u8; 32], crate::entry::SubjectHandle)>, StoreError> {
        let rows: Vec<(Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT index_mac, handle FROM subject_index LIMIT ?")
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?;
        rows.iter().map(|(m, h)| legacy_row(m, h)).collect()
    }

    async fn move_legacy_links(&self, links: &[LinkRow]) -> Result<(), StoreError> {
        let mut tx = TxConn::begin(&self.write, "BEGIN IMMEDIATE").await?;
        for link in links {
            sqlx::query(
                "INSERT INTO subject_links (index_mac, sealed_handle, kek_id) \
                 VALUES (?, ?, ?) ON CONFLICT (index_mac) DO NOTHING",
            )
            .bind(link.index_mac.to_vec())
            .bind(link.sealed_handle.clone())
            .bind(&link.kek_id)
            .execute(tx.conn())
            .await?;
            sqlx::query("DELETE FROM subject_index WHERE index_mac = ?")
                .bind(link.index_mac.to_vec())
                .execute(tx.conn())
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn erasure(&self, seq: Seq) -> Result<Option<ErasureRow>, StoreError> {
        let row: Option<ErasureCols> = sqlx::query_as(&format!(
            "SELECT {ERASURE_COLUMNS} FROM erased_subjects WHERE erasure_seq = ?"
        ))
        .bind(to_i64(seq.0))
        .fetch_optional(&self.read)
        .await?;
        row.map(erasure_row).transpose()
    }

    async fn erasures_by_ref(
        &self,
        request_ref: &str,
        limit: u32,
    ) -> Result<Vec<ErasureRow>, StoreError> {
        let rows: Vec<ErasureCols> = sqlx::query_as(&format!(
            "SELECT {ERASURE_COLUMNS} FROM erased_subjects WHERE request_ref = ? \
             ORDER BY erasure_seq LIMIT ?"
        ))
        .bind(request_ref)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.into_iter().map(erasure_row).collect()
    }
}
