//! `auditledger rotate-kek`: end the current KEK epoch now.
//!
//! With the service running (it holds the ledger), the command asks it through the keys
//! directory (`keys/kek.rotate`, naming the epoch to end) and waits until that epoch's KEK is
//! destroyed; the service re-wraps in the background while it keeps serving. With the service
//! stopped, the command does the same work itself, with a progress bar. Either way it is
//! resumable: run it again after an interruption and it finishes the epoch that was started.

use std::fs;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::Dirs;
use crate::epochs::files::ROTATE_REQUEST_FILE;
use crate::epochs::rotation::{RotationConfig, Rotator};
use crate::vault::Vault;

/// How a rotation run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The old epochs are destroyed; everything live is under `epoch`.
    Done {
        /// The epoch now current.
        epoch: u32,
        /// Keys and links re-wrapped by this run (0 when a running service did it).
        rewrapped: u64,
        /// Epochs destroyed.
        destroyed: Vec<u32>,
    },
    /// Stopped early on request (`--stop-after-batches`); run again to finish.
    Interrupted {
        /// Keys and links re-wrapped by this run.
        rewrapped: u64,
    },
}

/// Ends the current KEK epoch of the ledger in `dirs`.
pub async fn rotate_kek(
    dirs: &Dirs,
    config: RotationConfig,
    stop_after_batches: Option<u64>,
    timeout: Duration,
) -> anyhow::Result<Rotation> {
    match crate::backend::open(dirs, crate::backend::Access::Maintenance).await {
        Ok((store, lock)) => {
            let result = offline(dirs, Arc::clone(&store), config, stop_after_batches).await;
            crate::backend::close(store.as_ref(), lock).await;
            result
        }
        Err(e) => {
            println!("a running service holds the ledger ({e:#}); asking it to end the KEK epoch");
            online(dirs, timeout).await
        }
    }
}

async fn offline(
    dirs: &Dirs,
    store: Arc<dyn crate::store::Store>,
    config: RotationConfig,
    stop_after_batches: Option<u64>,
) -> anyhow::Result<Rotation> {
    let keyring = crate::epochs::prepare(store.as_ref(), &dirs.keys_dir, config.length).await?;
    let resuming = keyring
        .epochs()
        .iter()
        .any(|e| e.destroyed_at.is_none() && e.epoch < keyring.current().epoch);
    let vault = Arc::new(Vault::open(Arc::clone(&store), keyring, dirs.keys_dir.clone()).await?);
    crate::epochs::seal_legacy_links(store.as_ref(), &vault).await?;
    if resuming {
        eprintln!(
            "resuming the rotation to epoch {}",
            vault.current_kek().epoch
        );
    }
    let rotator = Rotator::new(
        Arc::clone(&store),
        Arc::clone(&vault),
        dirs.keys_dir.clone(),
        config,
    );
    let bar = crate::cli::progress_bar(0, "keys");
    bar.set_message("re-wrapping data keys and subject links");
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let pass = rotator
        .pass(!resuming, stop_after_batches, &progress)
        .await?;
    if pass.interrupted {
        bar.abandon();
        return Ok(Rotation::Interrupted {
            rewrapped: pass.rewrapped,
        });
    }
    bar.finish_and_clear();
    if pass.leased_elsewhere {
        anyhow::bail!(
            "another instance is rotating the KEK epochs of this ledger now; wait for it, or run this again in 10 s"
        );
    }
    Ok(Rotation::Done {
        epoch: vault.current_kek().epoch,
        rewrapped: pass.rewrapped,
        destroyed: pass.destroyed,
    })
}

async fn online(dirs: &Dirs, timeout: Duration) -> anyhow::Result<Rotation> {
    let (store, _lock) = crate::backend::open(dirs, crate::backend::Access::ReadOnly).await?;
    let epochs = store.kek_epochs().await?;
    let Some(current) = epochs.iter().rev().find(|e| e.destroyed_at.is_none()) else {
        anyhow::bail!("the ledger records no KEK epoch yet; start the service once");
    };
    let ending = current.epoch;
    let request = dirs.keys_dir.join(ROTATE_REQUEST_FILE);
    {
        let mut f = fs::File::create(&request)
            .with_context(|| format!("cannot write {}", request.display()))?;
        writeln!(f, "{ending}")?;
        f.sync_all()?;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let epochs = store.kek_epochs().await?;
        // Destroyed in the database, and the KEK file gone (it is destroyed just after).
        let ended = epochs.iter().filter(|e| e.epoch <= ending).all(|e| {
            e.destroyed_at.is_some()
                && !crate::epochs::files::kek_path(&dirs.keys_dir, e.epoch).exists()
        });
        if ended {
            let _ = fs::remove_file(&request);
            let epoch = epochs
                .iter()
                .rev()
                .find(|e| e.destroyed_at.is_none())
                .map_or(ending + 1, |e| e.epoch);
            store.close().await;
            return Ok(Rotation::Done {
                epoch,
                rewrapped: 0,
                destroyed: epochs
                    .iter()
                    .filter(|e| e.epoch <= ending)
                    .map(|e| e.epoch)
                    .collect(),
            });
        }
        if tokio::time::Instant::now() > deadline {
            store.close().await;
            anyhow::bail!(
                "the service has not destroyed epoch {ending} within {} s; it keeps working on it in the background (see /metrics auditledger_kek_rewrap_remaining); run this again to wait",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
