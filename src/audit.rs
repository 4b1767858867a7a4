//! Verification of the stored ledger: the same checks as the offline verifier
//! ([`crate::verify::Verifier`]), fed straight from the database a chunk at a time, on blocking
//! threads, through the read pool — so it never holds the write lock and never blocks appends.
//! Used by `GET /v1/audit/verify` and `auditledger verify`.
//!
//! It verifies one consistent snapshot: the head, the newest checkpoint and the key vault are
//! read together at the start, and nothing appended (or checkpointed) after that is looked at,
//! so appends and checkpoints racing a long verification never cause a false alarm.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::entry::{EntryHash, GENESIS_PREV_HASH, LedgerId, Seq};
use crate::merkle::{self, MerkleHash};
use crate::report::AuditReport;
use crate::store::{Store, StoreError};
use crate::timefmt::now_micros;
use crate::verify::{
    Failure, FailureKind, Hashed, Proven, Start, Trusted, TrustedKeys, Verifier, vault,
};
use rayon::prelude::*;

/// Rows verified per chunk.
const AUDIT_CHUNK_ROWS: u32 = 10_000;

/// Why a verification could not be run (as opposed to finding tampering).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A verification thread failed.
    #[error("verification task failed: {0}")]
    Task(String),
    /// The range starts beyond the head.
    #[error(transparent)]
    BeyondHead(#[from] BeyondHead),
}

/// A range that starts beyond the head: there is nothing there to verify or export. Bad
/// input, not a finding about the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "from_seq {from} is beyond the head: the ledger holds {size} entries, so from_seq can be at most {size}"
)]
pub struct BeyondHead {
    /// The requested first seq.
    pub from: Seq,
    /// Entries in the ledger.
    pub size: u64,
}

/// The ledger as it stood at one moment: what a verification checks, however long it runs
/// while appends and checkpoints continue. Entries and checkpoints made later are not part of
/// it, nor are vault changes made later (an erasure committed after it deletes a key whose
/// erasure entry is not in it).
#[derive(Debug)]
pub struct Snapshot {
    /// Entries in the ledger then (the head's seq + 1).
    pub size: u64,
    /// The newest checkpoint then.
    pub latest_checkpoint: Option<crate::checkpoint::Checkpoint>,
    /// The vault's key references then.
    pub vault: std::collections::HashSet<crate::crypto::KeyRef>,
}

impl Snapshot {
    /// Takes a snapshot of the ledger now: head, newest checkpoint and vault in one read
    /// transaction of the database.
    ///
    /// # Errors
    /// The store failed.
    pub async fn take(store: &dyn Store) -> Result<Snapshot, StoreError> {
        let s = store.audit_snapshot().await?;
        Ok(Snapshot {
            size: s.head.map_or(0, |h| h.seq.0 + 1),
            latest_checkpoint: s.latest_checkpoint,
            vault: s.vault,
        })
    }

    /// Refuses a range that starts beyond the head: one past it (`from == size`) is an empty
    /// range, anything further names entries that do not exist.
    ///
    /// # Errors
    /// [`BeyondHead`] if `from > size`.
    pub fn check_from(&self, from: Seq) -> Result<(), BeyondHead> {
        if from.0 > self.size {
            return Err(BeyondHead {
                from,
                size: self.size,
            });
        }
        Ok(())
    }

    /// The number of entries a verification of `from..=to` looks at.
    #[must_use]
    pub fn range_len(&self, from: Seq, to: Option<Seq>) -> u64 {
        let end = to.map_or(self.size, |t| t.0.saturating_add(1).min(self.size));
        end.saturating_sub(from.0)
    }
}

/// What the stored ledger is verified against: trusted public keys (from the keys directory,
/// never from the database) and the ledger's identity (likewise).
#[derive(Clone, Debug)]
pub struct AuditTrust {
    /// Every key the ledger has used, with the ranges the keys directory records.
    pub keys: TrustedKeys,
    /// The ledger's identity.
    pub ledger_id: LedgerId,
}

/// A finished verification: the report to sign, and what an ok proved.
#[derive(Debug)]
pub struct Verification {
    /// The report (its `signed_at_size` is the snapshot's size).
    pub report: AuditReport,
    /// What was proven, if the verification passed.
    pub proven: Option<Proven>,
}

/// The hash before `from` and the Merkle right edge at size `from`, as stored.
pub async fn range_start(
    store: &dyn Store,
    from: Seq,
) -> Result<(EntryHash, Vec<MerkleHash>), StoreError> {
    if from.0 == 0 {
        return Ok((GENESIS_PREV_HASH, Vec::new()));
    }
    let prev = Seq(from.0 - 1);
    let row = store.read_global(prev, Some(prev), 1).await?;
    let prev_hash = row
        .into_iter()
        .next()
        .map(|r| r.into_record().map(|r| r.entry_hash))
        .transpose()?
        .unwrap_or(GENESIS_PREV_HASH);
    let ids = merkle::decompose(0, from.0);
    let stored = store.merkle_nodes(&ids).await?;
    Ok((
        prev_hash,
        ids.iter()
            .filter_map(|id| stored.get(id).copied())
            .collect(),
    ))
}

/// Verifies entries `from..=to` (to defaults to the head of the snapshot taken at the start)
/// and every stored checkpoint they complete; on a whole-ledger run also the key vault against
/// the chain and the newest checkpoint against the head. `progress` counts entries.
///
/// # Errors
/// The verification could not run (see [`AuditError`]); tampering is a report, not an error.
pub async fn verify_range(
    store: Arc<dyn Store>,
    trust: AuditTrust,
    from: Seq,
    to: Option<Seq>,
    progress: Arc<AtomicU64>,
) -> Result<Verification, AuditError> {
    let snapshot = Snapshot::take(store.as_ref()).await?;
    verify_snapshot(store, trust, &snapshot, from, to, progress).await
}

/// Verifies entries `from..=to` of `snapshot` (to defaults to its last entry) and every stored
/// checkpoint they complete; on a whole-ledger run also the key vault against the chain and
/// the newest checkpoint against the head, as the snapshot has them.
///
/// # Errors
/// The verification could not run (see [`AuditError`]); tampering is a report, not an error.
pub async fn verify_snapshot(
    store: Arc<dyn Store>,
    trust: AuditTrust,
    snapshot: &Snapshot,
    from: Seq,
    to: Option<Seq>,
    progress: Arc<AtomicU64>,
) -> Result<Verification, AuditError> {
    snapshot.check_from(from)?;
    let size = snapshot.size;
    let last = size
        .checked_sub(1)
        .map(|h| to.map_or(Seq(h), |t| t.min(Seq(h))))
        .filter(|l| *l >= from);
    let whole_ledger = from.0 == 0 && to.is_none_or(|t| t.0 + 1 >= size);
    let mut report = AuditReport {
        ledger_id: trust.ledger_id,
        signed_at_size: size,
        from_seq: from.0,
        to_seq: last.map(|l| l.0),
        entries_checked: 0,
        checkpoints_checked: 0,
        first_failure: None,
        verified_at_micros: now_micros(),
        statement: String::new(),
    };
    let (prev_hash, frontier) = range_start(store.as_ref(), from).await?;
    let trusted = Trusted {
        keys: trust.keys,
        ledger_id: Some(trust.ledger_id),
        checkpoint: None,
        candidates: Vec::new(),
    };
    let mut verifier = match Verifier::new(
        trusted,
        &Start {
            seq: from,
            prev_hash,
            frontier,
        },
    ) {
        Ok(v) => v,
        Err(mut f) => {
            f.kind = FailureKind::CheckpointMismatch;
            f.detail = format!("the stored Merkle tree is incomplete before seq {from}");
            return Ok(finished(report, Err(f)));
        }
    };
    if whole_ledger {
        verifier.track_key_refs();
    }
    let mut failure: Option<Failure> = None;
    if let Some(last) = last {
        // The next chunk is read while this one is verified (one chunk ahead at most).
        let (sender, mut chunks) = tokio::sync::mpsc::channel(1);
        let reader = tokio::spawn(read_chunks(Arc::clone(&store), from, last, sender));
        while failure.is_none() {
            let Some(chunk) = chunks.recv().await else {
                break;
            };
            let Chunk { rows, checkpoints } = chunk?;
            if rows.is_empty() {
                let next = verifier.next_seq();
                failure = Some(Failure::new(
                    next,
                    FailureKind::SeqMismatch,
                    format!("entries from seq {next} to seq {last} are missing"),
                ));
                break;
            }
            let progress = Arc::clone(&progress);
            let (back, result) = tokio::task::spawn_blocking(move || {
                let result = verify_chunk(&mut verifier, rows, &checkpoints, &progress);
                (verifier, result)
            })
            .await
            .map_err(|e| AuditError::Task(e.to_string()))?;
            verifier = back;
            if let Err(f) = result {
                failure = Some(f);
            }
        }
        drop(chunks);
        reader.await.map_err(|e| AuditError::Task(e.to_string()))?;
    }
    if let Some(f) = failure {
        report.entries_checked = progress.load(Ordering::Relaxed);
        return Ok(finished(report, Err(f)));
    }
    // Checks that concern the ledger as a whole, against the snapshot read at the start.
    let whole = if whole_ledger {
        whole_ledger_checks(&verifier, snapshot)
    } else {
        None
    };
    let entries = verifier.entries();
    let outcome = tokio::task::spawn_blocking(move || verifier.finish())
        .await
        .map_err(|e| AuditError::Task(e.to_string()))?;
    report.entries_checked = entries;
    let outcome = match (outcome, whole) {
        (Err(f), Some(w)) => Err(if w.seq < f.seq { w } else { f }),
        (Err(f), None) | (Ok(_), Some(f)) => Err(f),
        (Ok(p), None) => Ok(p),
    };
    Ok(finished(report, outcome))
}

/// The newest checkpoint against the head, and the key vault against the chain.
fn whole_ledger_checks(verifier: &Verifier, snapshot: &Snapshot) -> Option<Failure> {
    let size = snapshot.size;
    let mut found: Option<Failure> = None;
    if let Some(cp) = &snapshot.latest_checkpoint
        && cp.tree_size > size
    {
        found = Some(Failure::new(
            Seq(size),
            FailureKind::Truncated,
            format!(
                "checkpoint {} covers {} entries, but the ledger holds {size}: the tail was cut off",
                cp.tree_size, cp.tree_size
            ),
        ));
    }
    if let Err(f) = vault::check(verifier.invariants(), &snapshot.vault)
        && found.as_ref().is_none_or(|w| f.seq < w.seq)
    {
        found = Some(f);
    }
    found
}

fn finished(mut report: AuditReport, outcome: Result<Proven, Failure>) -> Verification {
    let proven = match outcome {
        Ok(p) => {
            report.checkpoints_checked = p.checkpoints;
            Some(p)
        }
        Err(f) => {
            tracing::error!(seq = f.seq.0, kind = %f.kind, "verification found tampering");
            metrics::counter!(crate::telemetry::VERIFICATION_FAILURES).increment(1);
            report.first_failure = Some(f);
            None
        }
    };
    report.verified_at_micros = now_micros();
    Verification { report, proven }
}

/// Rows of the range read from the database, and the stored checkpoints they complete.
struct Chunk {
    rows: Vec<crate::store::EntryRow>,
    checkpoints: Vec<crate::checkpoint::Checkpoint>,
}

/// Reads `from..=last` a chunk at a time and hands each over, until the range is read, a chunk
/// comes back empty (entries missing: the verifier reports where), or the verification stops
/// taking them.
async fn read_chunks(
    store: Arc<dyn Store>,
    from: Seq,
    last: Seq,
    chunks: tokio::sync::mpsc::Sender<Result<Chunk, StoreError>>,
) {
    let mut next = from;
    while next <= last {
        let chunk = read_chunk(store.as_ref(), next, last).await;
        let read_to = match &chunk {
            Ok(c) => c.rows.last().map(|r| r.disclosure_fields().0),
            Err(_) => None,
        };
        if chunks.send(chunk).await.is_err() {
            return;
        }
        // Nothing more after an empty chunk or an error: the verification ends there.
        let Some(read_to) = read_to else { return };
        next = Seq(read_to.saturating_add(1));
    }
}

async fn read_chunk(store: &dyn Store, next: Seq, last: Seq) -> Result<Chunk, StoreError> {
    let rows = store
        .read_global(next, Some(last), AUDIT_CHUNK_ROWS)
        .await?;
    let checkpoints = match rows.last() {
        Some(r) => {
            let chunk_end = r.disclosure_fields().0.saturating_add(1);
            store.checkpoints(next.0 + 1, chunk_end, u32::MAX).await?
        }
        None => Vec::new(),
    };
    Ok(Chunk { rows, checkpoints })
}

/// Feeds one chunk of rows, and the checkpoints they complete, to the verifier: decoded and
/// hashed on every core first, then checked in order. Returns the next seq expected, or the
/// first failure.
fn verify_chunk(
    verifier: &mut Verifier,
    rows: Vec<crate::store::EntryRow>,
    checkpoints: &[crate::checkpoint::Checkpoint],
    progress: &AtomicU64,
) -> Result<Seq, Failure> {
    let hashed: Vec<Result<Hashed, crate::store::MalformedRow>> = rows
        .into_par_iter()
        .map(|row| row.into_record().map(Hashed::new))
        .collect();
    let mut cps = checkpoints.iter().peekable();
    for hashed in hashed {
        let hashed = hashed.map_err(|m| {
            Failure::new(
                m.seq,
                FailureKind::MalformedRecord,
                format!("column {} does not decode", m.what),
            )
        })?;
        let seq = hashed.record().entry.header.seq;
        verifier.push_hashed(&hashed)?;
        while let Some(cp) = cps.next_if(|c| c.tree_size <= seq.0 + 1) {
            verifier.push_checkpoint(cp)?;
        }
        progress.fetch_add(1, Ordering::Relaxed);
    }
    Ok(verifier.next_seq())
}
