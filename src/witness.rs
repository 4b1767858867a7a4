//! Publishing checkpoints outside the database, to witnesses: a directory of files and/or an
//! HTTP webhook. Before each publication the service proves that the new checkpoint is
//! consistent (RFC 6962) with the one it last published, and refuses to publish if not.
//!
//! A publication is one JSON object: `{"checkpoint": …, "previous": … or null,
//! "consistency_proof": [hex…]}`. In the directory it is written as
//! `checkpoint-<tree_size, 20 digits>.json` and `latest.json` (atomically, by rename).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::checkpoint::{Checkpoint, CheckpointJson};
use crate::crypto::PublicKey;
use crate::entry::{EntryHash, Seq};
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

/// The file in the keys directory in which the service remembers the last checkpoint it
/// handed to its witnesses (any kind): that checkpoint's JSON, as `GET /v1/checkpoints/latest`
/// gives it. It lives outside the database so that restoring an older copy of the database
/// cannot roll it back.
pub const PUBLISHED_STATE_FILE: &str = "published.json";

/// Entry hashes read per query when a root is recomputed at start.
const ROOT_CHUNK_ROWS: u32 = 50_000;

/// The checkpoint remembered in `path` (see [`PUBLISHED_STATE_FILE`]), if the file exists.
///
/// # Errors
///
/// The file exists but cannot be read or is not a checkpoint: the service must not start
/// without knowing what it published.
pub fn read_published_state(path: &Path) -> anyhow::Result<Option<Checkpoint>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let json: CheckpointJson = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a checkpoint: it records what this service last published; restore it \
             from a backup of the keys directory, or rebuild it from the witness",
            path.display()
        )
    })?;
    Ok(Some(json.parse().with_context(|| {
        format!("{} holds a malformed checkpoint", path.display())
    })?))
}

/// Remembers `cp` as published: written to a temporary file, synced, renamed over `path`, and
/// the directory synced, so that after a crash the file holds the old or the new checkpoint,
/// whole.
fn remember_published(path: &Path, cp: &Checkpoint) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    let mut body = serde_json::to_vec_pretty(&cp.to_json())?;
    body.push(b'\n');
    let tmp = dir.join(format!(
        ".{PUBLISHED_STATE_FILE}.{}.tmp",
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        std::fs::write(&tmp, &body)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// The Merkle root and the last entry hash of the first `n` entries, for each `n` in `sizes`
/// (each at least 1), recomputed from the entries' own hashes read a chunk at a time — never
/// from stored tree nodes, which whoever can rewrite the entries can rewrite too.
///
/// # Errors
///
/// The store failed, or an entry below the largest size is missing.
pub async fn roots_from_entries(
    store: &dyn Store,
    sizes: &[u64],
) -> anyhow::Result<Vec<(MerkleHash, EntryHash)>> {
    let end = sizes.iter().copied().max().unwrap_or(0);
    let mut found: HashMap<u64, (MerkleHash, EntryHash)> = HashMap::new();
    let mut tree = merkle::CompactRange::new();
    while tree.size() < end {
        let next = tree.size();
        let rows = store
            .entry_hashes(Seq(next), Seq(end - 1), ROOT_CHUNK_ROWS)
            .await?;
        if rows.is_empty() {
            bail!("entry {next} is missing from the database; refusing to serve it");
        }
        for (seq, hash) in rows {
            if seq.0 != tree.size() {
                bail!(
                    "entry {} is missing from the database; refusing to serve it",
                    tree.size()
                );
            }
            tree.append(merkle::leaf_hash(&hash.0), |_, _| {});
            if sizes.contains(&tree.size()) {
                found.insert(tree.size(), (tree.root(), hash));
            }
        }
    }
    sizes
        .iter()
        .map(|n| {
            found.get(n).copied().with_context(|| {
                format!("no root for {n} entries: a checkpoint has size at least 1")
            })
        })
        .collect()
}

/// Refuses to serve a database that is behind, or has diverged from, what this service last
/// published: the checkpoint remembered in `state_file` (whatever the witness kind) and the
/// latest one in the witness directory, if there is one. Behind is a restored old backup or a
/// truncated tail; diverged is rewritten history. The root is recomputed from the entries.
///
/// # Errors
///
/// The database is behind or diverged (the message says which and how), a record of what was
/// published cannot be read, or the store failed.
pub async fn check_against_published(
    store: &dyn Store,
    state_file: &Path,
    witness_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let mut published = Vec::new();
    if let Some(cp) = read_published_state(state_file)? {
        published.push((cp, format!("(as {} records)", state_file.display())));
    }
    if let Some(dir) = witness_dir
        && let Some(cp) = read_latest(dir)?
    {
        published.push((cp, format!("to {}", dir.display())));
    }
    let size = store.head().await?.map_or(0, |h| h.seq.0 + 1);
    for (cp, whence) in &published {
        if cp.tree_size == 0 {
            bail!("the checkpoint published {whence} has size 0, which no ledger signs");
        }
        if cp.tree_size > size {
            bail!(
                "the database holds {size} entries, but checkpoint {} (root {}) was already published {whence}: \
                 the database was truncated or restored from an older copy; refusing to serve it",
                cp.tree_size,
                cp.root_hash.to_hex(),
            );
        }
    }
    let sizes: Vec<u64> = published.iter().map(|(cp, _)| cp.tree_size).collect();
    let roots = roots_from_entries(store, &sizes).await?;
    for ((cp, whence), (root, last)) in published.iter().zip(roots) {
        if root != cp.root_hash || last != cp.last_entry_hash {
            bail!(
                "the first {} entries of the database hash to root {}, but root {} was published for them {whence}: \
                 history was rewritten; refusing to serve it",
                cp.tree_size,
                root.to_hex(),
                cp.root_hash.to_hex(),
            );
        }
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
    /// The last checkpoint published (to every witness), the `previous` of the next one.
    last: Option<Checkpoint>,
    /// Where the service remembers what it published ([`PUBLISHED_STATE_FILE`]).
    state_file: PathBuf,
    /// The tree size that file holds.
    remembered: Option<u64>,
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
        // Remembered before any witness hears of it: the record is never behind a witness,
        // so a database restored from before this checkpoint cannot be served again.
        if self.remembered.is_none_or(|r| r < cp.tree_size) {
            remember_published(&self.state_file, &cp).context("not publishing")?;
            self.remembered = Some(cp.tree_size);
        }
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
/// Each publication is first remembered in `state_file` ([`PUBLISHED_STATE_FILE`]).
///
/// # Errors
///
/// The configuration is inconsistent, or what was published before cannot be read.
pub fn spawn(
    store: Arc<dyn Store>,
    signing: Arc<crate::ledger::SigningCell>,
    config: WitnessConfig,
    state_file: PathBuf,
) -> anyhow::Result<Option<mpsc::UnboundedSender<Checkpoint>>> {
    if config.webhook_ca.is_some() && config.webhook.is_none() {
        bail!("--witness-webhook-ca is set but --witness-webhook is not");
    }
    if config.dir.is_none() && config.webhook.is_none() {
        return Ok(None);
    }
    let client = webhook_client(config.webhook_ca.as_deref())?;
    let remembered = read_published_state(&state_file)?;
    let in_dir = match &config.dir {
        Some(dir) => read_latest(dir)?,
        None => None,
    };
    // The newer of the two: publications go on proving consistency with it.
    let last = match (remembered.clone(), in_dir) {
        (Some(a), Some(b)) => Some(if a.tree_size >= b.tree_size { a } else { b }),
        (a, b) => a.or(b),
    };
    let remembered = remembered.map(|c| c.tree_size);
    let (sender, mut receiver) = mpsc::unbounded_channel::<Checkpoint>();
    let mut publisher = Publisher {
        store,
        signing,
        keys: Vec::new(),
        config,
        client,
        last,
        state_file,
        remembered,
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
