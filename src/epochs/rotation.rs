//! Starting epochs, re-wrapping under the current one, and destroying the old ones: the same
//! code runs in the service's background task and in `auditledger rotate-kek` with the service
//! stopped. Every step is resumable: an epoch is recorded only after its KEK file is synced; a
//! row is re-wrapped only if it is still under the KEK it was read under; an epoch is marked
//! destroyed only in a transaction that finds nothing live under it, and its file is destroyed
//! only after that commit (at start-up, a file whose epoch is marked destroyed is destroyed).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;

use super::{EpochError, files, length_micros};
use crate::crypto::Kek;
use crate::store::{EpochRow, LinkRow, Store, StoreError, VaultRow};
use crate::telemetry;
use crate::timefmt::now_micros;
use crate::vault::{Vault, VaultError};

/// How long a rotation lease lasts without renewal.
const LEASE: Duration = Duration::from_secs(10);
/// How often the service checks whether an epoch is due or a rotation is half-done.
pub const POLL: Duration = Duration::from_secs(1);

/// Settings of the rotation.
#[derive(Clone, Copy, Debug)]
pub struct RotationConfig {
    /// Length of a new epoch.
    pub length: Duration,
    /// Keys (and links) re-wrapped per transaction.
    pub batch: u32,
}

/// Why a rotation step failed; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The epochs failed.
    #[error(transparent)]
    Epochs(#[from] EpochError),
    /// A key file could not be written.
    #[error(transparent)]
    KeyFile(#[from] crate::keyfiles::KeyFileError),
    /// A row does not unwrap under the KEK it names.
    #[error("a key-vault row under KEK id {0} does not unwrap: it was tampered with")]
    Tampered(String),
}

/// What a pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// The epoch this pass started, if any.
    pub started: Option<u32>,
    /// Keys and links re-wrapped.
    pub rewrapped: u64,
    /// Epochs destroyed.
    pub destroyed: Vec<u32>,
    /// Another instance holds the lease: nothing was done.
    pub leased_elsewhere: bool,
    /// Stopped after the requested number of batches.
    pub interrupted: bool,
}

/// Rotates the KEK epochs of one ledger.
pub struct Rotator {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    keys_dir: PathBuf,
    config: RotationConfig,
    holder: String,
    pace: bool,
}

impl Rotator {
    /// Leaves the database idle after each batch for as long as the batch took, so that a
    /// rotation takes at most half of the single writer's time and appends keep flowing (the
    /// service's background rotation; an offline `rotate-kek` runs flat out).
    #[must_use]
    pub fn paced(mut self) -> Rotator {
        self.pace = true;
        self
    }

    async fn breathe(&self, batch_started: std::time::Instant) {
        if self.pace {
            tokio::time::sleep(batch_started.elapsed().min(Duration::from_secs(1))).await;
        }
    }

    /// A rotator for the ledger behind `vault`.
    #[must_use]
    pub fn new(
        store: Arc<dyn Store>,
        vault: Arc<Vault>,
        keys_dir: PathBuf,
        config: RotationConfig,
    ) -> Rotator {
        let mut id = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut id);
        Rotator {
            store,
            vault,
            keys_dir,
            config,
            holder: hex::encode(id),
            pace: false,
        }
    }

    async fn lease(&self) -> Result<bool, StoreError> {
        let now = now_micros();
        self.store
            .take_rotation_lease(&self.holder, now, now.saturating_add(length_micros(LEASE)))
            .await
    }

    /// Whether a new epoch should start: the current one is due, or `rotate-kek` asked to end
    /// it (the request names the epoch it wants ended, so an old request starts nothing).
    fn due(&self, current: &EpochRow) -> bool {
        if now_micros() >= current.rotate_by {
            return true;
        }
        std::fs::read_to_string(self.keys_dir.join(files::ROTATE_REQUEST_FILE))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .is_some_and(|e| e == current.epoch)
    }

    /// One pass: starts a new epoch if one is due (or `force`), re-wraps what is under older
    /// epochs, deletes their tombstones and destroys them. `max_batches` stops early (tests).
    pub async fn pass(
        &self,
        force: bool,
        max_batches: Option<u64>,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Pass, RotationError> {
        let mut out = Pass::default();
        let ring = self.vault.refresh().await?;
        let current = ring
            .epochs()
            .iter()
            .rev()
            .find(|e| e.destroyed_at.is_none())
            .cloned()
            .ok_or(EpochError::Missing { epoch: 1 })?;
        metrics::gauge!(telemetry::KEK_EPOCH).set(f64::from(current.epoch));
        let old_living = ring
            .epochs()
            .iter()
            .any(|e| e.epoch < current.epoch && e.destroyed_at.is_none());
        let start = force || self.due(&current);
        if !start && !old_living {
            metrics::gauge!(telemetry::KEK_REWRAP_REMAINING).set(0.0);
            return Ok(out);
        }
        if !self.lease().await? {
            out.leased_elsewhere = true;
            return Ok(out);
        }
        let result = self
            .leased_pass(start, &ring, max_batches, progress, &mut out)
            .await;
        // Hand the lease back at once (an interrupted or finished pass), so that another run
        // need not wait for it to lapse; a crashed holder's lease lapses after LEASE.
        let now = now_micros();
        let _ = self.store.take_rotation_lease(&self.holder, now, now).await;
        result.map(|()| out)
    }

    async fn leased_pass(
        &self,
        start: bool,
        ring: &super::Keyring,
        max_batches: Option<u64>,
        progress: &(dyn Fn(u64, u64) + Sync),
        out: &mut Pass,
    ) -> Result<(), RotationError> {
        if start {
            let next = ring.epochs().last().map_or(1, |e| e.epoch + 1);
            out.started = Some(self.start_epoch(next).await?);
        }
        let (rewrapped, interrupted) = self.rewrap_all(max_batches, progress).await?;
        out.rewrapped = rewrapped;
        if interrupted {
            out.interrupted = true;
            return Ok(());
        }
        out.destroyed = self.destroy_old().await?;
        Ok(())
    }

    async fn start_epoch(&self, epoch: u32) -> Result<u32, RotationError> {
        let kek = files::create(&self.keys_dir, epoch, &Kek::generate())?;
        let now = now_micros();
        let row = self
            .store
            .insert_epoch(&EpochRow {
                epoch,
                kek_id: kek.id().to_hex(),
                started_at: now,
                rotate_by: now.saturating_add(length_micros(self.config.length)),
                destroyed_at: None,
            })
            .await?;
        if row.kek_id != kek.id().to_hex() {
            return Err(EpochError::Mismatch {
                epoch,
                file: kek.id().to_hex(),
                db: row.kek_id,
            }
            .into());
        }
        let _ = std::fs::remove_file(self.keys_dir.join(files::ROTATE_REQUEST_FILE));
        self.vault.refresh().await?;
        metrics::gauge!(telemetry::KEK_EPOCH).set(f64::from(epoch));
        tracing::info!(
            epoch,
            "KEK epoch started; re-wrapping the live keys under it"
        );
        Ok(epoch)
    }

    /// Re-wraps every key and link not under the current epoch, in batches of one transaction
    /// each; appends go on between batches. Returns how many rows changed and whether it stopped
    /// early.
    async fn rewrap_all(
        &self,
        max_batches: Option<u64>,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<(u64, bool), RotationError> {
        let current = self.vault.refresh().await?.current();
        let total = self.store.count_not_under(&current.kek_id).await?;
        let mut done = 0u64;
        let mut batches = 0u64;
        let batch = self.config.batch.max(1);
        let report = |done: u64| {
            #[allow(clippy::cast_precision_loss, reason = "a gauge")]
            metrics::gauge!(telemetry::KEK_REWRAP_REMAINING).set(total.saturating_sub(done) as f64);
            progress(done, total);
        };
        report(0);
        let mut after: Option<Vec<u8>> = None;
        loop {
            if max_batches.is_some_and(|m| batches >= m) {
                return Ok((done, true));
            }
            let started = std::time::Instant::now();
            let rows = self
                .store
                .keys_not_under(&current.kek_id, after.as_deref(), batch)
                .await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.key_ref.to_bytes().to_vec());
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let old = self.vault.kek_by_id(&row.kek_id).await?;
                let dek = old
                    .kek
                    .unwrap(&row.wrapped, &row.key_ref)
                    .map_err(|_| RotationError::Tampered(row.kek_id.clone()))?;
                let wrapped = current.kek.wrap(&dek, &row.key_ref);
                out.push((
                    VaultRow {
                        key_ref: row.key_ref,
                        wrapped,
                        kek_id: current.kek_id.clone(),
                    },
                    row.kek_id,
                ));
            }
            done += self.store.rewrap(&out, &[]).await?;
            batches += 1;
            self.lease().await?;
            metrics::counter!(telemetry::KEK_REWRAPPED).increment(out.len() as u64);
            report(done);
            self.breathe(started).await;
        }
        let mut after: Option<[u8; 32]> = None;
        loop {
            if max_batches.is_some_and(|m| batches >= m) {
                return Ok((done, true));
            }
            let started = std::time::Instant::now();
            let rows = self
                .store
                .links_not_under(&current.kek_id, after.as_ref(), batch)
                .await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.index_mac);
            let mut out = Vec::with_capacity(rows.len());
            for link in rows {
                let handle = self.vault.open_link(&link).await?;
                out.push((
                    LinkRow {
                        index_mac: link.index_mac,
                        sealed_handle: current.kek.seal_link(&handle, &link.index_mac),
                        kek_id: current.kek_id.clone(),
                    },
                    link.kek_id,
                ));
            }
            done += self.store.rewrap(&[], &out).await?;
            batches += 1;
            self.lease().await?;
            metrics::counter!(telemetry::KEK_REWRAPPED).increment(out.len() as u64);
            report(done);
            self.breathe(started).await;
        }
        if done > 0 {
            tracing::info!(
                rewrapped = done,
                epoch = current.epoch,
                "live keys and links re-wrapped"
            );
        }
        Ok((done, false))
    }

    /// Deletes the tombstones of older epochs and destroys every older epoch nothing live
    /// needs; returns the epochs destroyed.
    async fn destroy_old(&self) -> Result<Vec<u32>, RotationError> {
        let ring = self.vault.refresh().await?;
        let current = ring.current();
        if self.store.count_not_under(&current.kek_id).await? > 0 {
            // Keys made under an older epoch by a writer that raced the start: next pass.
            return Ok(Vec::new());
        }
        let purged = self
            .store
            .delete_tombstones_not_under(&current.kek_id)
            .await?;
        if purged > 0 {
            tracing::info!(count = purged, "erasure tombstones of ended epochs deleted");
        }
        let mut destroyed = Vec::new();
        for row in ring.epochs() {
            if row.epoch >= current.epoch || row.destroyed_at.is_some() {
                continue;
            }
            if self.store.destroy_epoch(row.epoch, now_micros()).await? {
                files::destroy(&self.keys_dir, row.epoch)?;
                metrics::counter!(telemetry::KEK_EPOCHS_DESTROYED).increment(1);
                tracing::info!(
                    epoch = row.epoch,
                    "KEK epoch destroyed: every copy of what it wrapped is now unreadable"
                );
                destroyed.push(row.epoch);
            }
        }
        self.vault.refresh().await?;
        Ok(destroyed)
    }
}

/// The service's background task: a pass every [`POLL`]; failures are logged and retried.
pub async fn run(rotator: Rotator) {
    let mut every = tokio::time::interval(POLL);
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        every.tick().await;
        if let Err(e) = rotator.pass(false, None, &|_, _| {}).await {
            let now = tokio::time::Instant::now();
            if last_warning.is_none_or(|t| now.duration_since(t) > Duration::from_secs(30)) {
                tracing::warn!(error = %e, "KEK epoch rotation failed; retrying");
                last_warning = Some(now);
            }
        }
    }
}
