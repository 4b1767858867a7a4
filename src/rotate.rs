//! KEK rotation: re-wrap every data key in the vault under a new key-encryption key.
//!
//! Resumable by construction. The new KEK is written to `kek.key.next` before any row changes;
//! rows are re-wrapped in batches, each batch one transaction, and every row records the id of
//! the KEK that wraps it, so a rerun after an interruption picks up the rows still under the
//! old KEK. Only when none is left is the old KEK moved aside (`kek.key.old-<id>`) and
//! `kek.key.next` renamed over `kek.key`. No entry changes; the chain is untouched.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use zeroize::Zeroizing;

use crate::config::Dirs;
use crate::crypto::Kek;
use crate::keyfiles::{self, KEK_FILE};
use crate::store::VaultRow;

/// Where a rotation in progress keeps the new KEK.
pub const NEXT_KEK_FILE: &str = "kek.key.next";

/// How a rotation run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// Every key is under the new KEK, which is now `kek.key`.
    Done {
        /// Keys re-wrapped by this run.
        rewrapped: u64,
        /// Where the old KEK was moved.
        old_kek_file: String,
    },
    /// Stopped early on request (`--stop-after-batches`); run again to finish.
    Interrupted {
        /// Keys re-wrapped by this run.
        rewrapped: u64,
    },
}

fn read_kek(path: &Path) -> anyhow::Result<Kek> {
    let text = Zeroizing::new(
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let mut raw = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), raw.as_mut())
        .map_err(|_| anyhow::anyhow!("{} is malformed: expected 64 hex digits", path.display()))?;
    Ok(Kek::from_slice(raw.as_ref())?)
}

fn write_kek(path: &Path, kek: &Kek) -> anyhow::Result<()> {
    let mut text = Zeroizing::new(hex::encode(kek.expose()));
    text.push('\n');
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// Rotates the KEK of the ledger in `dirs`. The server must not be running (the data
/// directory's lock says so).
pub async fn rotate_kek(
    dirs: &Dirs,
    batch_size: u32,
    stop_after_batches: Option<u64>,
) -> anyhow::Result<Rotation> {
    let (store, lock) = crate::backend::open(dirs, crate::backend::Access::Maintenance).await?;
    let keys_dir = &dirs.keys_dir;
    let old = keyfiles::load(keys_dir)?.kek;
    let next_path = keys_dir.join(NEXT_KEK_FILE);
    let new = if next_path.exists() {
        eprintln!(
            "resuming the KEK rotation recorded in {}",
            next_path.display()
        );
        read_kek(&next_path)?
    } else {
        let kek = Kek::generate();
        write_kek(&next_path, &kek)?;
        sync_dir(keys_dir)?;
        kek
    };
    let (old_id, new_id) = (old.id().to_hex(), new.id().to_hex());

    let total = store.count_vault_rows_not_under(&new_id).await?;
    let bar = crate::cli::progress_bar(total, "keys");
    bar.set_message("re-wrapping data keys");
    let mut rewrapped = 0u64;
    let mut batches = 0u64;
    let interrupted = loop {
        let rows = store
            .vault_rows_not_under(&new_id, batch_size.max(1))
            .await?;
        if rows.is_empty() {
            break false;
        }
        let mut updated = Vec::with_capacity(rows.len());
        for row in rows {
            if row.kek_id != old_id {
                bail!(
                    "a vault key is wrapped under KEK id {}, which is neither the current KEK ({old_id}) nor the new one ({new_id}); nothing more was changed",
                    row.kek_id
                );
            }
            let dek = old.unwrap(&row.wrapped, &row.key_ref).map_err(|_| {
                anyhow::anyhow!(
                    "a vault key that claims KEK id {old_id} does not unwrap under it: the row was tampered with; nothing more was changed"
                )
            })?;
            updated.push(VaultRow {
                key_ref: row.key_ref,
                wrapped: new.wrap(&dek, &row.key_ref),
                kek_id: new_id.clone(),
            });
        }
        store.rewrap_vault_rows(&updated).await?;
        rewrapped += updated.len() as u64;
        bar.inc(updated.len() as u64);
        batches += 1;
        if stop_after_batches.is_some_and(|n| batches >= n) {
            break true;
        }
    };
    crate::backend::close(store.as_ref(), lock).await;
    if interrupted {
        bar.abandon();
        return Ok(Rotation::Interrupted { rewrapped });
    }
    bar.finish_and_clear();

    // Every key is under the new KEK: keep the old one aside, then switch, atomically.
    let old_path = keys_dir.join(format!("{KEK_FILE}.old-{old_id}"));
    if !old_path.exists() {
        write_kek(&old_path, &old)?;
    }
    fs::rename(&next_path, keys_dir.join(KEK_FILE))
        .with_context(|| format!("cannot install {}", next_path.display()))?;
    sync_dir(keys_dir)?;
    Ok(Rotation::Done {
        rewrapped,
        old_kek_file: old_path.display().to_string(),
    })
}
