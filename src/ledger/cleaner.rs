//! After an erasure, outside the writer: two background tasks.
//!
//! - **Cleaning the live files.** The erasure's commit deletes the subject's key and index rows,
//!   but older copies remain in the live files: SQLite's WAL frames, PostgreSQL's dead tuples.
//!   The cleaner truncates the WAL (SQLite) or VACUUMs the key tables once no snapshot can
//!   see the deleted rows (PostgreSQL), and records `erased_subjects.cleaned_at`. It never
//!   waits on a reader: a blocked attempt is retried with backoff until it succeeds, with a
//!   warning naming what blocks, a gauge of the erasures waiting and a counter of blocked
//!   attempts. It looks at start-up (so a crash between an erasure's commit and its cleanup is
//!   repaired), whenever an erasure commits, and every [`IDLE_CHECK`].
//! - **Every instance forgets.** Each instance drops an erased subject's key from its cache
//!   when the erasure's PostgreSQL NOTIFY arrives and, in case that connection was lost, polls
//!   `erased_subjects` every [`FORGET_POLL_INTERVAL`]. A poll that fails or takes longer than
//!   [`FORGET_QUERY_TIMEOUT`] empties the whole cache, so the bound
//!   [`CACHES_CLEARED_WITHIN_MS`] holds even when this instance cannot reach the database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::crypto::KeyRef;
use crate::entry::Seq;
use crate::store::{Cleanup, Store};
use crate::telemetry;
use crate::vault::Vault;

/// First wait before retrying a blocked cleanup; doubled on each further block.
const RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between cleanup attempts while blocked.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often the cleaner looks for uncleaned erasures when nothing wakes it.
pub const IDLE_CHECK: Duration = Duration::from_secs(30);
/// A cleanup blocked for less than this is not worth a warning (a writer's commit in the way).
const WARN_AFTER: Duration = Duration::from_secs(1);
/// At most one warning this often while the cleanup stays blocked.
const WARN_EVERY: Duration = Duration::from_secs(30);

const FORGET_POLL_MS: u64 = 1000;
const FORGET_QUERY_TIMEOUT_MS: u64 = 1000;
/// How often every instance polls `erased_subjects` for erasures made by any instance.
pub const FORGET_POLL_INTERVAL: Duration = Duration::from_millis(FORGET_POLL_MS);
/// Longest a poll may take; one that takes longer (or fails) empties the key cache.
pub const FORGET_QUERY_TIMEOUT: Duration = Duration::from_millis(FORGET_QUERY_TIMEOUT_MS);
/// Bound, in milliseconds after an erasure commits (so also after its receipt), within which
/// no instance holds the erased subject's key in memory any longer: the first poll that
/// starts after the commit starts within one interval and ends within the query timeout.
/// Usually it is much sooner: the NOTIFY arrives at commit.
pub const CACHES_CLEARED_WITHIN_MS: u64 = FORGET_POLL_MS + FORGET_QUERY_TIMEOUT_MS;
/// Erasures read per poll query.
const FORGET_PAGE: u32 = 10_000;
/// Wait before listening again after the notice connection failed for good.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// Runs for ever: cleans the live files after every erasure, retrying until it succeeds.
pub(super) async fn clean_after_erasures(store: Arc<dyn Store>, wake: Arc<Notify>) {
    let mut delay = RETRY_FIRST;
    let mut blocked_since: Option<Instant> = None;
    let mut warned_at: Option<Instant> = None;
    loop {
        match store.clean_after_erasures().await {
            Ok(Cleanup::Idle) => {
                set_pending(0);
                if let Some(since) = blocked_since.take() {
                    tracing::info!(
                        blocked_secs = since.elapsed().as_secs(),
                        "erasure cleanup no longer blocked"
                    );
                }
                delay = RETRY_FIRST;
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(IDLE_CHECK) => {}
                }
                continue;
            }
            Ok(Cleanup::Cleaned {
                erasures,
                remaining,
            }) => {
                set_pending(remaining);
                tracing::info!(
                    erasures,
                    remaining,
                    "live files cleaned after erasure (WAL truncated / key tables vacuumed)"
                );
                if erasures > 0 {
                    // More may be clean already (committed while this attempt ran).
                    continue;
                }
            }
            Ok(Cleanup::Blocked { pending, by }) => {
                set_pending(pending);
                metrics::counter!(telemetry::ERASURE_CLEANUP_BLOCKED).increment(1);
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= WARN_AFTER
                    && warned_at.is_none_or(|w| w.elapsed() >= WARN_EVERY)
                {
                    warned_at = Some(Instant::now());
                    tracing::warn!(
                        pending,
                        blocked_secs = since.elapsed().as_secs(),
                        "erasure cleanup blocked for {} s: {by}; the destroyed rows stay in the \
                         live files until it ends (retrying)",
                        since.elapsed().as_secs()
                    );
                }
            }
            Err(e) => {
                if warned_at.is_none_or(|w| w.elapsed() >= WARN_EVERY) {
                    warned_at = Some(Instant::now());
                    tracing::warn!(error = %e, "erasure cleanup failed (retrying)");
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "a count of erasures, far below 2^52"
)]
fn set_pending(n: u64) {
    metrics::gauge!(telemetry::ERASURE_CLEANUP_PENDING).set(n as f64);
}

/// Runs for ever: drops from this instance's cache the key of every subject erased by any
/// instance, on notice and by polling.
pub(super) async fn forget_erased_keys(store: Arc<dyn Store>, vault: Arc<Vault>) {
    tokio::join!(
        listen(Arc::clone(&store), Arc::clone(&vault)),
        poll(store, vault)
    );
}

/// Forgets each key as its erasure's notice arrives (PostgreSQL; returns at once on SQLite).
async fn listen(store: Arc<dyn Store>, vault: Arc<Vault>) {
    loop {
        match store.erasure_notices().await {
            Ok(None) => return,
            Ok(Some(mut notices)) => loop {
                match notices.next().await {
                    Ok(handle) => vault.forget(&KeyRef::Subject(handle)),
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the erasure notice connection; polling meanwhile");
                        break;
                    }
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for erasure notices; polling meanwhile");
            }
        }
        tokio::time::sleep(LISTEN_RETRY).await;
    }
}

/// Forgets the key of every erasure after the last one seen, every [`FORGET_POLL_INTERVAL`].
/// The first poll reads every erasure ever made, so that a read racing start-up cannot put an
/// erased key back in the cache.
async fn poll(store: Arc<dyn Store>, vault: Arc<Vault>) {
    let mut last: Option<Seq> = None;
    let mut warned_at: Option<Instant> = None;
    loop {
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(
            FORGET_QUERY_TIMEOUT,
            store.erasures_after(last, FORGET_PAGE),
        )
        .await
        {
            Ok(Ok(erased)) => {
                for (seq, handle) in &erased {
                    vault.forget(&KeyRef::Subject(*handle));
                    last = Some(*seq);
                }
                if erased.len() == FORGET_PAGE as usize {
                    continue;
                }
            }
            failed => {
                // Whatever was erased meanwhile must not stay in memory past the bound.
                vault.clear_cached();
                if warned_at.is_none_or(|w| w.elapsed() >= WARN_EVERY) {
                    warned_at = Some(Instant::now());
                    if let Ok(Err(e)) = failed {
                        tracing::warn!(error = %e, "cannot poll for erasures; cached subject keys dropped");
                    } else {
                        tracing::warn!(
                            "polling for erasures timed out; cached subject keys dropped"
                        );
                    }
                }
            }
        }
        tokio::time::sleep_until(started + FORGET_POLL_INTERVAL).await;
    }
}
