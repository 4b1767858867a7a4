//! Publishing checkpoints outside the database, to witnesses: a directory of files and/or an
//! HTTP webhook. Before each publication the service proves that the new checkpoint is
//! consistent (RFC 6962) with the one it last published, and refuses to publish if not.
//!
//! A publication is one JSON object: `{"checkpoint": …, "previous": … or null,
//! "consistency_proof": [hex…]}`. In the directory it is written as
//! `checkpoint-<tree_size, 20 digits>.json` and `latest.json` (atomically, by rename).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::checkpoint::{Checkpoint, CheckpointJson};
use crate::crypto::PublicKey;
use crate::ledger::stored_range_hashes;
use crate::merkle::{self, MerkleHash};
use crate::store::{Store, StoreError};

/// Where checkpoints are published.
#[derive(Clone, Debug, Default)]
pub struct WitnessConfig {
    /// A directory (a mounted bucket, a replicated volume) to write checkpoint files into.
    pub dir: Option<PathBuf>,
    /// An `https://` (or `http://`) URL that receives each publication as a JSON POST.
    pub webhook: Option<String>,
    /// PEM CA certificates trusted for the webhook besides the built-in public roots.
    pub webhook_ca: Option<PathBuf>,
}

/// The webhook's HTTP client: rustls with the Mozilla roots, plus the configured private CA.
fn webhook_client(ca: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca)
            .with_context(|| format!("cannot read webhook CA file {}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|c| !c.is_empty())
            .with_context(|| format!("{} holds no PEM certificate", ca.display()))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .context("cannot set up the webhook's HTTP client")
}

/// One publication.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Publication {
    /// The new checkpoint.
    pub checkpoint: CheckpointJson,
    /// The previously published checkpoint, if any.
    pub previous: Option<CheckpointJson>,
    /// Consistency proof from `previous` to `checkpoint`, hex, RFC 6962 order.
    pub consistency_proof: Vec<String>,
}

/// The latest checkpoint in a witness directory, if any.
pub fn read_latest(dir: &Path) -> anyhow::Result<Option<Checkpoint>> {
    let path = dir.join("latest.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let publication: Publication = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a checkpoint publication", path.display()))?;
    Ok(Some(publication.checkpoint.parse()?))
}

/// The Merkle root of the first `size` entries, from stored nodes.
pub async fn root_at(store: &dyn Store, size: u64) -> Result<MerkleHash, StoreError> {
    Ok(stored_range_hashes(store, &[(0, size)]).await?[0])
}

/// A consistency proof between two sizes, from stored nodes.
pub async fn consistency_proof(
    store: &dyn Store,
    from: u64,
    to: u64,
) -> Result<Vec<MerkleHash>, StoreError> {
    let ranges =
        merkle::consistency_ranges(from, to).map_err(|e| StoreError::Conflict(e.to_string()))?;
    stored_range_hashes(store, &ranges).await
}

/// Refuses to serve a database that is behind, or has diverged from, the checkpoint this
/// service last published to its witness directory: that is a restored old backup, a
/// truncated tail, or rewritten history.
pub async fn check_against_published(store: &dyn Store, dir: &Path) -> anyhow::Result<()> {
    let Some(published) = read_latest(dir)? else {
        return Ok(());
    };
    let size = store.head().await?.map_or(0, |h| h.seq.0 + 1);
    if published.tree_size > size {
        bail!(
            "the database holds {size} entries, but checkpoint {} (root {}) was already published to {}: \
             the database was truncated or restored from an older copy; refusing to serve it",
            published.tree_size,
            published.root_hash.to_hex(),
            dir.display()
        );
    }
    let root = root_at(store, published.tree_size).await?;
    if root != published.root_hash {
        bail!(
            "the first {} entries of the database hash to root {}, but {} was published for them to {}: \
             history was rewritten; refusing to serve it",
            published.tree_size,
            root.to_hex(),
            published.root_hash.to_hex(),
            dir.display()
        );
    }
    Ok(())
}

fn write_atomically(dir: &Path, name: &str, body: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, body)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}

struct Publisher {
    store: Arc<dyn Store>,
    signing: Arc<crate::ledger::SigningCell>,
    /// Every signing key seen in use (a checkpoint signed just before a rotation may arrive
    /// after it).
    keys: Vec<PublicKey>,
    config: WitnessConfig,
    client: reqwest::Client,
    last: Option<Checkpoint>,
}

impl Publisher {
    async fn publish(&mut self, cp: Checkpoint) -> anyhow::Result<()> {
        if self
            .last
            .as_ref()
            .is_some_and(|l| l.tree_size >= cp.tree_size)
        {
            return Ok(());
        }
        let current = self.signing.current().key.public_key();
        if !self.keys.contains(&current) {
            self.keys.push(current);
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.key_id() == cp.key_id)
            .with_context(|| {
                format!(
                    "checkpoint {} signed by unknown key {}",
                    cp.tree_size, cp.key_id
                )
            })?;
        cp.verify(key)?;
        let proof = match &self.last {
            Some(prev) => {
                let proof =
                    consistency_proof(self.store.as_ref(), prev.tree_size, cp.tree_size).await?;
                merkle::verify_consistency(prev.tree_size, cp.tree_size, &prev.root_hash, &cp.root_hash, &proof)
                    .with_context(|| {
                        format!(
                            "checkpoint {} is NOT consistent with the previously published checkpoint {}; not publishing",
                            cp.tree_size, prev.tree_size
                        )
                    })?;
                proof
            }
            None => Vec::new(),
        };
        let publication = Publication {
            checkpoint: cp.to_json(),
            previous: self.last.as_ref().map(Checkpoint::to_json),
            consistency_proof: proof.iter().map(MerkleHash::to_hex).collect(),
        };
        let body = serde_json::to_vec_pretty(&publication)?;
        if let Some(dir) = &self.config.dir {
            std::fs::create_dir_all(dir)?;
            write_atomically(dir, &format!("checkpoint-{:020}.json", cp.tree_size), &body)?;
            write_atomically(dir, "latest.json", &body)?;
        }
        if let Some(url) = &self.config.webhook {
            let r = self
                .client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .with_context(|| format!("webhook {url} unreachable"))?;
            if !r.status().is_success() {
                bail!("webhook {url} answered {}", r.status());
            }
        }
        tracing::info!(tree_size = cp.tree_size, root = %cp.root_hash.to_hex(), "checkpoint published");
        self.last = Some(cp);
        Ok(())
    }
}

/// Starts the publisher; send it every committed checkpoint. `None` if no witness is set.
pub fn spawn(
    store: Arc<dyn Store>,
    signing: Arc<crate::ledger::SigningCell>,
    config: WitnessConfig,
) -> anyhow::Result<Option<mpsc::UnboundedSender<Checkpoint>>> {
    if config.webhook_ca.is_some() && config.webhook.is_none() {
        bail!("--witness-webhook-ca is set but --witness-webhook is not");
    }
    if config.dir.is_none() && config.webhook.is_none() {
        return Ok(None);
    }
    let client = webhook_client(config.webhook_ca.as_deref())?;
    let last = match &config.dir {
        Some(dir) => read_latest(dir)?,
        None => None,
    };
    let (sender, mut receiver) = mpsc::unbounded_channel::<Checkpoint>();
    let mut publisher = Publisher {
        store,
        signing,
        keys: Vec::new(),
        config,
        client,
        last,
    };
    tokio::spawn(async move {
        while let Some(cp) = receiver.recv().await {
            if let Err(e) = publisher.publish(cp).await {
                // The next checkpoint will be proven against the last one that was published.
                tracing::error!(error = format!("{e:#}"), "checkpoint not published");
                metrics::counter!(crate::telemetry::WITNESS_FAILURES).increment(1);
            }
        }
    });
    Ok(Some(sender))
}
