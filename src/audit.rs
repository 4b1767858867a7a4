//! Verification of the stored ledger: the same checks as the offline verifier (`bundle`),
//! fed straight from the database a chunk at a time, in constant memory, on blocking threads,
//! through the read pool — so it never holds the write lock and never blocks appends. Used by
//! `GET /v1/audit/verify` and `auditledger verify`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bundle::{BundleVerifier, Stop, UnusableInput};
use crate::checkpoint::Checkpoint;
use crate::entry::{EntryHash, GENESIS_PREV_HASH, Seq};
use crate::merkle::{self, MerkleHash};
use crate::report::AuditReport;
use crate::store::{Store, StoreError};
use crate::timefmt::now_micros;
use crate::verify::{Failure, FailureKind, TrustedKeys};

/// Rows verified per chunk.
const AUDIT_CHUNK_ROWS: u32 = 10_000;

/// Why a verification could not be run (as opposed to finding tampering).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing to verify with.
    #[error(transparent)]
    Unusable(#[from] UnusableInput),
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

fn stop_to_failure(stop: Stop) -> Result<Failure, AuditError> {
    match stop {
        Stop::Tampered(f) => Ok(f),
        Stop::Unusable(u) => Err(AuditError::Unusable(u)),
    }
}

/// The ledger as it stood at one moment: what a verification checks, however long it runs
/// while appends and checkpoints continue. Entries and checkpoints made later are not part of
/// it: a checkpoint counts only if its `tree_size` is at most `size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Entries in the ledger then (the head's seq + 1).
    pub size: u64,
    /// The newest checkpoint then.
    pub latest_checkpoint: Option<Checkpoint>,
}

impl Snapshot {
    /// Takes a snapshot of the ledger now.
    ///
    /// The newest checkpoint is read before the head. A checkpoint is committed with the
    /// entries it covers or after them, and each read sees every commit that finished before
    /// it began (SQLite WAL and PostgreSQL read committed alike), so on an intact ledger the
    /// checkpoint read first never covers more than the head read second. Read the other way
    /// round, a checkpoint committed in between would look like a cut-off tail.
    ///
    /// # Errors
    ///
    /// The store failed.
    pub async fn take(store: &dyn Store) -> Result<Snapshot, StoreError> {
        let latest_checkpoint = store.latest_checkpoint().await?;
        let size = store.head().await?.map_or(0, |h| h.seq.0 + 1);
        Ok(Snapshot {
            size,
            latest_checkpoint,
        })
    }

    /// Refuses a range that starts beyond the head: one past it (`from == size`) is an empty
    /// range, anything further names entries that do not exist.
    ///
    /// # Errors
    ///
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

/// Verifies entries `from..=to` (to defaults to the head as of the start) and every stored
/// checkpoint they complete; `progress` counts entries as they pass.
///
/// # Errors
///
/// The verification could not run (see [`AuditError`]); tampering is a report, not an error.
pub async fn verify_range(
    store: Arc<dyn Store>,
    keys: TrustedKeys,
    from: Seq,
    to: Option<Seq>,
    progress: Arc<AtomicU64>,
) -> Result<AuditReport, AuditError> {
    let snapshot = Snapshot::take(store.as_ref()).await?;
    verify_snapshot(store, keys, &snapshot, from, to, progress).await
}

/// Verifies entries `from..=to` of `snapshot` (to defaults to its last entry) and every
/// stored checkpoint they complete; `progress` counts entries as they pass.
///
/// # Errors
///
/// The verification could not run (see [`AuditError`]); tampering is a report, not an error.
pub async fn verify_snapshot(
    store: Arc<dyn Store>,
    keys: TrustedKeys,
    snapshot: &Snapshot,
    from: Seq,
    to: Option<Seq>,
    progress: Arc<AtomicU64>,
) -> Result<AuditReport, AuditError> {
    snapshot.check_from(from)?;
    let head = snapshot.size.checked_sub(1).map(Seq);
    let last = head
        .map(|h| to.map_or(h, |t| t.min(h)))
        .filter(|l| *l >= from);
    let mut report = AuditReport {
        from_seq: from.0,
        to_seq: last.map(|l| l.0),
        entries_checked: 0,
        checkpoints_checked: 0,
        first_failure: None,
        verified_at_micros: now_micros(),
    };
    let mut verifier = BundleVerifier::new(keys, None)?;
    let (prev_hash, frontier) = range_start(store.as_ref(), from).await?;
    if verifier.start_at(from, prev_hash, &frontier).is_err() {
        report.first_failure = Some(Failure {
            seq: from,
            kind: FailureKind::CheckpointMismatch,
            detail: "the stored Merkle tree is incomplete before this seq".to_owned(),
        });
        return Ok(report);
    }
    let mut failure: Option<Failure> = None;
    if let Some(last) = last {
        let mut next = from;
        while next <= last && failure.is_none() {
            let rows = store
                .read_global(next, Some(last), AUDIT_CHUNK_ROWS)
                .await?;
            if rows.is_empty() {
                failure = Some(Failure {
                    seq: next,
                    kind: FailureKind::SeqMismatch,
                    detail: format!("entries from seq {next} to seq {last} are missing"),
                });
                break;
            }
            let chunk_end = next.0 + rows.len() as u64;
            let checkpoints = store.checkpoints(next.0 + 1, chunk_end, u32::MAX).await?;
            let progress = Arc::clone(&progress);
            let (back, outcome) = tokio::task::spawn_blocking(move || {
                let (v, n, r) = verify_chunk(verifier, rows, checkpoints, next, &progress);
                (v, (n, r))
            })
            .await
            .map_err(|e| AuditError::Task(e.to_string()))?;
            verifier = back;
            let (n, result) = outcome;
            next = n;
            if let Err(stop) = result {
                failure = Some(stop_to_failure(stop)?);
            }
        }
    }
    let checkpoints_seen;
    if failure.is_none() {
        let entries = verifier.entries();
        match tokio::task::spawn_blocking(move || verifier.finish_records())
            .await
            .map_err(|e| AuditError::Task(e.to_string()))?
        {
            Ok(summary) => {
                report.entries_checked = summary.entries;
                checkpoints_seen = summary.checkpoints;
            }
            Err(stop) => {
                report.entries_checked = entries;
                checkpoints_seen = 0;
                failure = Some(stop_to_failure(stop)?);
            }
        }
    } else {
        report.entries_checked = progress.load(Ordering::Relaxed);
        checkpoints_seen = 0;
    }
    report.checkpoints_checked = checkpoints_seen;
    if failure.is_none() {
        let whole_tail = to.is_none_or(|t| head.is_none_or(|h| t >= h));
        failure = ledger_wide_checks(store.as_ref(), snapshot, whole_tail).await?;
    }
    if let Some(f) = &failure {
        tracing::error!(seq = f.seq.0, kind = %f.kind, "verification found tampering");
        metrics::counter!(crate::telemetry::VERIFICATION_FAILURES).increment(1);
    }
    report.first_failure = failure;
    report.verified_at_micros = now_micros();
    Ok(report)
}

/// Feeds one chunk of rows, and the checkpoints they complete, to the verifier. Returns the
/// verifier, the next seq expected, and whether the chunk passed.
fn verify_chunk(
    mut verifier: BundleVerifier,
    rows: Vec<crate::store::EntryRow>,
    checkpoints: Vec<crate::checkpoint::Checkpoint>,
    mut next: Seq,
    progress: &AtomicU64,
) -> (BundleVerifier, Seq, Result<(), Stop>) {
    let mut cps = checkpoints.into_iter().peekable();
    for row in rows {
        let record = match row.into_record() {
            Ok(r) => r,
            Err(m) => {
                let failure = Failure {
                    seq: m.seq,
                    kind: FailureKind::MalformedRecord,
                    detail: format!("column {} does not decode", m.what),
                };
                return (verifier, next, Err(Stop::Tampered(failure)));
            }
        };
        let seq = record.entry.header.seq;
        if let Err(stop) = verifier.push_record(&record) {
            return (verifier, next, Err(stop));
        }
        while let Some(cp) = cps.next_if(|c| c.tree_size <= seq.0 + 1) {
            if let Err(stop) = verifier.push_checkpoint(cp) {
                return (verifier, next, Err(stop));
            }
        }
        next = seq.next();
        progress.fetch_add(1, Ordering::Relaxed);
    }
    (verifier, next, Ok(()))
}

/// Checks that concern the ledger as a whole rather than one entry.
async fn ledger_wide_checks(
    store: &dyn Store,
    snapshot: &Snapshot,
    whole_tail: bool,
) -> Result<Option<Failure>, StoreError> {
    // A checkpoint that covers more than the ledger holds: the tail was cut off. Only the
    // snapshot's: one made since then may cover entries appended since then.
    let size = snapshot.size;
    if whole_tail
        && let Some(cp) = &snapshot.latest_checkpoint
        && cp.tree_size > size
    {
        return Ok(Some(Failure {
            seq: Seq(size),
            kind: FailureKind::Truncated,
            detail: format!(
                "checkpoint {} covers {} entries, but the ledger holds {size}: the tail was cut off",
                cp.tree_size, cp.tree_size
            ),
        }));
    }
    // A destroyed key that is back: restored from an old copy of the database.
    if let Some((handle, seq)) = store.restored_erased_keys().await?.into_iter().next() {
        return Ok(Some(Failure {
            seq,
            kind: FailureKind::RestoredErasedKey,
            detail: format!(
                "subject {} was erased at seq {seq}, but its data key is in the vault again",
                handle.to_hex()
            ),
        }));
    }
    Ok(None)
}
