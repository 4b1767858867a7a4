//! KEK epochs: forgetting that does not depend on overwriting.
//!
//! Every data key, subject link and erasure tombstone is wrapped under the KEK of an epoch.
//! Epochs are numbered 1, 2, ...; the highest is current, and everything new is wrapped under
//! it. When an epoch is due (`rotate_by`, fixed when it started) or an operator asks
//! (`auditledger rotate-kek`), a new one starts; the live rows are re-wrapped under it in
//! bounded batches while the service keeps serving; tombstones of old epochs are deleted; and
//! once nothing live is wrapped under an old epoch, its KEK file is destroyed. From then on
//! every copy of anything it wrapped — WAL frames, dead tuples, replicas, backups — is
//! unreadable: an erased subject's key and the link from their identifier to their handle are
//! gone with the last epoch that wrapped them. docs/ERASURE.md gives the operator's view.

pub mod files;
pub mod rotation;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::crypto::Kek;
use crate::keyfiles::KeyFileError;
use crate::store::{EpochRow, Store, StoreError};
use crate::timefmt::now_micros;

/// Default length of an epoch: a week.
pub const DEFAULT_EPOCH_HOURS: f64 = 168.0;
/// Time allowed after an epoch is due for its successor to re-wrap everything and destroy it;
/// part of every receipt's `forgotten_by`.
pub const DESTRUCTION_GRACE: Duration = Duration::from_secs(3600);

/// Why the epochs could not be brought into a usable state.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key file could not be read or written.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// A KEK file is not the one the database recorded for its epoch.
    #[error(
        "keys/epochs/{epoch}.kek (KEK id {file}) is not the KEK the database recorded for epoch {epoch} (KEK id {db}); is this the right keys directory?"
    )]
    Mismatch {
        /// The epoch.
        epoch: u32,
        /// Id of the file's KEK.
        file: String,
        /// Id the database records.
        db: String,
    },
    /// A living epoch's KEK file is missing while keys are still wrapped under it.
    #[error(
        "the KEK of epoch {epoch} (keys/epochs/{epoch}.kek) is missing, but the key vault still needs it; restore it from your key backup"
    )]
    Missing {
        /// The epoch.
        epoch: u32,
    },
}

/// The KEK of one living epoch.
pub struct EpochKek {
    /// Its number.
    pub epoch: u32,
    /// Its KEK's id (hex), as stored beside every row it wraps.
    pub kek_id: String,
    /// The KEK.
    pub kek: Kek,
}

impl std::fmt::Debug for EpochKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EpochKek({}, {})", self.epoch, self.kek_id)
    }
}

/// The KEKs of the living epochs, as this process knows them.
#[derive(Debug)]
pub struct Keyring {
    by_id: HashMap<String, Arc<EpochKek>>,
    current: Arc<EpochKek>,
    epochs: Vec<EpochRow>,
}

impl Keyring {
    /// Reads the epochs the database records and the KEK files of the living ones.
    pub async fn load(store: &dyn Store, keys_dir: &Path) -> Result<Keyring, EpochError> {
        let epochs = store.kek_epochs().await?;
        let mut files = files::read_all(keys_dir)?;
        let mut by_id = HashMap::new();
        for row in epochs.iter().filter(|r| r.destroyed_at.is_none()) {
            let Some(kek) = files.remove(&row.epoch) else {
                continue;
            };
            check_id(row, &kek)?;
            let k = Arc::new(EpochKek {
                epoch: row.epoch,
                kek_id: row.kek_id.clone(),
                kek,
            });
            by_id.insert(row.kek_id.clone(), k);
        }
        let current_row = epochs
            .iter()
            .rev()
            .find(|r| r.destroyed_at.is_none())
            .ok_or(EpochError::Missing { epoch: 1 })?;
        let current = by_id
            .get(&current_row.kek_id)
            .cloned()
            .ok_or(EpochError::Missing {
                epoch: current_row.epoch,
            })?;
        Ok(Keyring {
            by_id,
            current,
            epochs,
        })
    }

    /// The current epoch's KEK: everything new is wrapped under it.
    #[must_use]
    pub fn current(&self) -> Arc<EpochKek> {
        Arc::clone(&self.current)
    }

    /// The KEK with this id, if its epoch lives and this process holds its file.
    #[must_use]
    pub fn by_id(&self, kek_id: &str) -> Option<Arc<EpochKek>> {
        self.by_id.get(kek_id).cloned()
    }

    /// Every epoch, oldest first, as read.
    #[must_use]
    pub fn epochs(&self) -> &[EpochRow] {
        &self.epochs
    }
}

fn check_id(row: &EpochRow, kek: &Kek) -> Result<(), EpochError> {
    let file = kek.id().to_hex();
    if file == row.kek_id {
        Ok(())
    } else {
        Err(EpochError::Mismatch {
            epoch: row.epoch,
            file,
            db: row.kek_id.clone(),
        })
    }
}

/// Length of an epoch in microseconds.
#[must_use]
pub fn length_micros(length: Duration) -> i64 {
    i64::try_from(length.as_micros()).unwrap_or(i64::MAX)
}

/// Brings the keys directory and the database into agreement at start-up, then loads the
/// keyring: adopts a legacy `kek.key` as epoch 1; creates epoch 1 on a new ledger; records an
/// epoch whose file was written just before a crash; finishes destroying the file of an epoch
/// the database says is destroyed; refuses to start when a living epoch's KEK is missing while
/// something still needs it.
pub async fn prepare(
    store: &dyn Store,
    keys_dir: &Path,
    length: Duration,
) -> Result<Keyring, EpochError> {
    files::adopt_legacy(keys_dir)?;
    let mut on_disk = files::read_all(keys_dir)?;
    let recorded: BTreeMap<u32, EpochRow> = store
        .kek_epochs()
        .await?
        .into_iter()
        .map(|r| (r.epoch, r))
        .collect();
    if on_disk.is_empty() && recorded.is_empty() {
        on_disk.insert(1, files::create(keys_dir, 1, &Kek::generate())?);
    }
    let now = now_micros();
    for (epoch, kek) in &on_disk {
        match recorded.get(epoch) {
            Some(row) if row.destroyed_at.is_some() => files::destroy(keys_dir, *epoch)?,
            Some(row) => check_id(row, kek)?,
            None => {
                let row = store
                    .insert_epoch(&EpochRow {
                        epoch: *epoch,
                        kek_id: kek.id().to_hex(),
                        started_at: now,
                        rotate_by: now.saturating_add(length_micros(length)),
                        destroyed_at: None,
                    })
                    .await?;
                check_id(&row, kek)?;
            }
        }
    }
    // A living epoch whose file is gone: fine only if nothing needs it any more, and never the
    // newest (another instance may have just started it and not wrapped anything yet: its file
    // is missing here because this keys directory is not the shared one).
    let newest = recorded.keys().next_back().copied().unwrap_or(0);
    for row in recorded.values() {
        if row.destroyed_at.is_none()
            && !on_disk.contains_key(&row.epoch)
            && (row.epoch == newest || !store.destroy_epoch(row.epoch, now).await?)
        {
            return Err(EpochError::Missing { epoch: row.epoch });
        }
    }
    Keyring::load(store, keys_dir).await
}

/// Rows moved from the plaintext subject index per transaction.
const LEGACY_BATCH: u32 = 1000;

/// Seals the links of a ledger made before epochs: every plaintext `subject_index` row becomes
/// a `subject_links` row sealed under the current epoch, and is deleted. Returns how many.
pub async fn seal_legacy_links(
    store: &dyn Store,
    vault: &crate::vault::Vault,
) -> Result<u64, crate::vault::VaultError> {
    let mut moved = 0u64;
    loop {
        let rows = store.legacy_index_rows(LEGACY_BATCH).await?;
        if rows.is_empty() {
            return Ok(moved);
        }
        let current = vault.current_kek();
        let links: Vec<_> = rows
            .iter()
            .map(|(mac, handle)| crate::store::LinkRow {
                index_mac: *mac,
                sealed_handle: current.kek.seal_link(handle, mac),
                kek_id: current.kek_id.clone(),
            })
            .collect();
        store.move_legacy_links(&links).await?;
        moved += links.len() as u64;
    }
}
