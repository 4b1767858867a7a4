//! Storage of KEK epochs: which epochs exist, what each still wraps, and the erasure records
//! whose status depends on them. docs/ERASURE.md explains the life of an epoch.

use async_trait::async_trait;

use super::{StoreError, VaultRow};
use crate::entry::{Seq, SubjectHandle};

/// One KEK epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochRow {
    /// 1, 2, ...; the highest is current.
    pub epoch: u32,
    /// Id of its KEK.
    pub kek_id: String,
    /// When it started, µs.
    pub started_at: i64,
    /// When the next epoch is due, µs (fixed when it started).
    pub rotate_by: i64,
    /// When its KEK was destroyed, µs; `None` while it lives.
    pub destroyed_at: Option<i64>,
}

/// The link from an identifier's index MAC to a subject handle, sealed under an epoch's KEK.
#[derive(Clone, Debug)]
pub struct LinkRow {
    /// HMAC-SHA256(index key, identifier).
    pub index_mac: [u8; 32],
    /// `nonce || AES-256-GCM(epoch KEK, handle, aad = domain || index_mac)`.
    pub sealed_handle: Vec<u8>,
    /// The KEK that seals it.
    pub kek_id: String,
}

/// What an erasure records beside destroying the key, so that its receipt can be given again.
#[derive(Clone, Debug)]
pub struct ErasureRecord {
    /// The caller's reference.
    pub request_ref: String,
    /// The epoch current at the erasure.
    pub epoch: u32,
    /// When that epoch is promised to be destroyed, µs.
    pub forgotten_by: i64,
    /// Key that signed the receipt.
    pub receipt_key_id: String,
    /// The receipt's signature.
    pub receipt_signature: Vec<u8>,
}

/// A recorded erasure.
#[derive(Clone, Debug)]
pub struct ErasureRow {
    /// The erased handle.
    pub handle: SubjectHandle,
    /// Seq of its `SubjectErased` entry.
    pub erasure_seq: Seq,
    /// When, µs.
    pub erased_at: i64,
    /// What was recorded with it (`None` for erasures made before epochs existed).
    pub record: Option<ErasureRecord>,
    /// When the live files were cleaned past it, µs.
    pub cleaned_at: Option<i64>,
}

/// Storage of KEK epochs and erasure records.
#[async_trait]
pub trait EpochStore: Send + Sync {
    /// Every epoch, oldest first.
    async fn kek_epochs(&self) -> Result<Vec<EpochRow>, StoreError>;

    /// Records a new epoch unless one with this number exists; returns the one recorded.
    async fn insert_epoch(&self, row: &EpochRow) -> Result<EpochRow, StoreError>;

    /// Takes (or renews) the rotation lease for `holder` until `until` if it is free, lapsed or
    /// already held by `holder`.
    async fn take_rotation_lease(
        &self,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError>;

    /// Up to `limit` vault rows not wrapped under `kek_id`, in key order after `after`.
    async fn keys_not_under(
        &self,
        kek_id: &str,
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<VaultRow>, StoreError>;

    /// Up to `limit` subject links not sealed under `kek_id`, in MAC order after `after`.
    async fn links_not_under(
        &self,
        kek_id: &str,
        after: Option<&[u8; 32]>,
        limit: u32,
    ) -> Result<Vec<LinkRow>, StoreError>;

    /// Replaces re-wrapped keys and re-sealed links in one transaction; each row changes only
    /// if it is still under the KEK it was read under (`old_kek_id`), so a row erased or
    /// re-wrapped meanwhile is left alone. Returns how many rows changed.
    async fn rewrap(
        &self,
        keys: &[(VaultRow, String)],
        links: &[(LinkRow, String)],
    ) -> Result<u64, StoreError>;

    /// Vault rows plus links not under `kek_id`.
    async fn count_not_under(&self, kek_id: &str) -> Result<u64, StoreError>;

    /// Deletes the tombstones not sealed under `kek_id` (they die with their epoch).
    async fn delete_tombstones_not_under(&self, kek_id: &str) -> Result<u64, StoreError>;

    /// Marks `epoch` destroyed, in a transaction that first makes sure nothing live is still
    /// wrapped under its KEK (holding the epoch row against writers that read it as current).
    /// `false`: something still is, nothing changed.
    async fn destroy_epoch(&self, epoch: u32, now: i64) -> Result<bool, StoreError>;

    /// Up to `limit` rows of the legacy plaintext subject index (before epochs).
    async fn legacy_index_rows(
        &self,
        limit: u32,
    ) -> Result<Vec<([u8; 32], SubjectHandle)>, StoreError>;

    /// Moves legacy index rows to sealed links, deleting the plaintext rows, in one transaction.
    async fn move_legacy_links(&self, links: &[LinkRow]) -> Result<(), StoreError>;

    /// The erasure whose entry is at `seq`.
    async fn erasure(&self, seq: Seq) -> Result<Option<ErasureRow>, StoreError>;

    /// Up to `limit` erasures recorded with this request reference, oldest first.
    async fn erasures_by_ref(
        &self,
        request_ref: &str,
        limit: u32,
    ) -> Result<Vec<ErasureRow>, StoreError>;
}

pub(crate) fn epoch_row(
    epoch: i64,
    kek_id: String,
    started_at: i64,
    rotate_by: i64,
    destroyed_at: Option<i64>,
) -> Result<EpochRow, StoreError> {
    Ok(EpochRow {
        epoch: u32::try_from(epoch).map_err(|_| bad("kek_epochs.epoch"))?,
        kek_id,
        started_at,
        rotate_by,
        destroyed_at,
    })
}

pub(crate) fn link_row(mac: &[u8], sealed: Vec<u8>, kek_id: String) -> Result<LinkRow, StoreError> {
    Ok(LinkRow {
        index_mac: mac.try_into().map_err(|_| bad("subject_links.index_mac"))?,
        sealed_handle: sealed,
        kek_id,
    })
}

/// Raw columns of an `erased_subjects` row, in [`ERASURE_COLUMNS`] order.
pub(crate) type ErasureCols = (
    Vec<u8>,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<Vec<u8>>,
    Option<i64>,
);

pub(crate) const ERASURE_COLUMNS: &str = "handle, erasure_seq, erased_at, request_ref, epoch, \
    forgotten_by, receipt_key_id, receipt_signature, cleaned_at";

pub(crate) fn erasure_row(c: ErasureCols) -> Result<ErasureRow, StoreError> {
    let (handle, seq, erased_at, request_ref, epoch, forgotten_by, key_id, signature, cleaned) = c;
    let record = match (request_ref, epoch, forgotten_by, key_id, signature) {
        (Some(request_ref), Some(epoch), Some(forgotten_by), Some(key_id), Some(signature)) => {
            Some(ErasureRecord {
                request_ref,
                epoch: u32::try_from(epoch).map_err(|_| bad("erased_subjects.epoch"))?,
                forgotten_by,
                receipt_key_id: key_id,
                receipt_signature: signature,
            })
        }
        _ => None,
    };
    Ok(ErasureRow {
        handle: SubjectHandle::from_slice(&handle).map_err(|_| bad("erased_subjects.handle"))?,
        erasure_seq: Seq(super::to_u64(seq)),
        erased_at,
        record,
        cleaned_at: cleaned,
    })
}

pub(crate) fn legacy_row(
    mac: &[u8],
    handle: &[u8],
) -> Result<([u8; 32], SubjectHandle), StoreError> {
    Ok((
        mac.try_into().map_err(|_| bad("subject_index.index_mac"))?,
        SubjectHandle::from_slice(handle).map_err(|_| bad("subject_index.handle"))?,
    ))
}

fn bad(what: &str) -> StoreError {
    StoreError::Malformed(super::MalformedRow {
        seq: Seq(0),
        what: what.to_owned(),
    })
}
