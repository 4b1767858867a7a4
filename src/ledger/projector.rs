//! Keeps the read models (`crate::projections`) up with the log: after commits, folds the
//! entries past the stored position and applies them with it. Several instances may run it at
//! once: the position guard lets one apply each chunk.

use std::sync::Arc;
use std::time::Duration;

use super::ReadError;
use crate::entry::Seq;
use crate::projections::Delta;
use crate::store::Store;

/// Entries folded per transaction.
pub const CHUNK: u32 = 2000;
/// Pause after applying a chunk, so that a busy log is folded in larger chunks instead of one
/// transaction per commit (each is a commit on SQLite's single writer).
const SETTLE: Duration = Duration::from_millis(200);
/// Pause after a full chunk, while the read models are behind.
const BEHIND: Duration = Duration::from_millis(20);
/// Re-read at least this often without a commit notice.
const POLL: Duration = Duration::from_secs(1);

/// Folds and applies one chunk from the stored position; returns how many entries it covered
/// (0 when caught up) and the position after it.
///
/// # Errors
/// A read or write failed, or a row does not decode.
pub async fn step(store: &dyn Store) -> Result<(usize, u64), ReadError> {
    let from = store.projection_position().await?;
    let counted = store.read_counted(Seq(from), CHUNK).await?;
    let Some(last) = counted.last().map(|c| c.seq.0) else {
        return Ok((0, from));
    };
    let n = counted.len();
    let mut delta = Delta::default();
    for c in &counted {
        delta.add(c);
    }
    if store.apply_projection(from, last + 1, &delta).await? {
        Ok((n, last + 1))
    } else {
        // Another instance applied it: read where it got to.
        Ok((n, store.projection_position().await?))
    }
}

/// The maintainer task.
pub(super) async fn run(store: Arc<dyn Store>, mut commits: tokio::sync::watch::Receiver<u64>) {
    loop {
        commits.borrow_and_update();
        match step(store.as_ref()).await {
            Ok((n, position)) => {
                if let Ok(head) = store.head().await {
                    let size = head.map_or(0, |h| h.seq.0 + 1);
                    #[expect(clippy::cast_precision_loss, reason = "a gauge")]
                    metrics::gauge!("auditledger_projection_lag_entries")
                        .set(size.saturating_sub(position) as f64);
                }
                if n > 0 {
                    // A full chunk means the log is ahead by more than a chunk: go on after a
                    // short pause (letting the writer in), or the read models would fall
                    // behind for good under appends faster than a chunk per SETTLE.
                    let pause = if n >= CHUNK as usize { BEHIND } else { SETTLE };
                    tokio::time::sleep(pause).await;
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %e, "the read models could not be brought up to date"),
        }
        tokio::select! {
            _ = commits.changed() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}
