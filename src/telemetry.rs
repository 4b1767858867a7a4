//! Operational metrics, in the Prometheus text format at `GET /metrics`.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `auditledger_events_appended_total` | counter | entries committed by this instance |
//! | `auditledger_commits_total` | counter | append transactions committed (group commits) |
//! | `auditledger_commit_batch_events` | summary | entries per committed transaction |
//! | `auditledger_commit_seconds` | summary | insert + durable commit time per transaction |
//! | `auditledger_commit_failures_total` | counter | transactions rolled back (callers got 503; nothing acknowledged) |
//! | `auditledger_version_conflicts_total` | counter | appends refused with 409 |
//! | `auditledger_head_seq` | gauge | seq of the last entry this instance committed |
//! | `auditledger_erasures_total` | counter | subjects erased |
//! | `auditledger_checkpoints_total` | counter | checkpoints signed by this instance |
//! | `auditledger_checkpoint_tree_size` | gauge | tree size of the newest checkpoint signed here |
//! | `auditledger_witness_failures_total` | counter | checkpoint publications that failed |
//! | `auditledger_verification_failures_total` | counter | verifications (server-side) that found tampering |
//! | `auditledger_kek_epoch` | gauge | the current KEK epoch |
//! | `auditledger_kek_rewrap_remaining` | gauge | keys and links still wrapped under an older epoch |
//! | `auditledger_kek_rewrapped_total` | counter | keys and links re-wrapped by this instance |
//! | `auditledger_kek_epochs_destroyed_total` | counter | epochs whose KEK this instance destroyed |
//! | `auditledger_erasure_cleanup_pending` | gauge | erasures whose live files (SQLite WAL, PostgreSQL dead rows) are not yet cleaned |
//! | `auditledger_erasure_cleanup_blocked_total` | counter | cleanup attempts a reader or an old snapshot blocked (retried) |
//! | `auditledger_write_failures_total` | counter | write transactions (appends, erasures, checkpoints, probes) the database failed |
//! | `auditledger_writable` | gauge | 1 while the last write succeeded, 0 while the service cannot write (`/readyz` is 503) |
//! | `auditledger_commit_outcomes_resolved_total` | counter | commits whose answer was lost, by `outcome` (`committed`, `not_committed`, `unknown`) |
//! | `auditledger_idempotent_replays_total` | counter | appends answered with an earlier request's result (same idempotency key) |
//! | `auditledger_live_delivery_seconds` | histogram | from a batch's commit to its events being handed to a live subscriber's connection (SQLite, where the live feed takes batches from the writer; per part of up to 64 KB sent, the oldest event in it) |
//!
//! Labels carry no identifier, handle or data: nothing personal reaches the metrics.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Entries committed.
pub const EVENTS_APPENDED: &str = "auditledger_events_appended_total";
/// Transactions committed.
pub const COMMITS: &str = "auditledger_commits_total";
/// Entries per transaction.
pub const COMMIT_BATCH_EVENTS: &str = "auditledger_commit_batch_events";
/// Seconds per transaction (insert + commit).
pub const COMMIT_SECONDS: &str = "auditledger_commit_seconds";
/// From a batch's commit to its events being handed to a live subscriber's connection.
pub const LIVE_DELIVERY_SECONDS: &str = "auditledger_live_delivery_seconds";
/// Its buckets' upper bounds, in seconds.
pub const LIVE_DELIVERY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2,
    0.3, 0.5, 1.0, 2.0, 5.0,
];
/// Transactions rolled back.
pub const COMMIT_FAILURES: &str = "auditledger_commit_failures_total";
/// Batches prepared ahead that found the head moved under the lock, and were prepared again.
pub const STALE_BATCHES: &str = "auditledger_stale_batches_total";
/// Write transactions the database failed.
pub const WRITE_FAILURES: &str = "auditledger_write_failures_total";
/// 1 while the service can write, 0 while not.
pub const WRITABLE: &str = "auditledger_writable";
/// Commits whose answer was lost, by how they were resolved.
pub const COMMIT_OUTCOMES_RESOLVED: &str = "auditledger_commit_outcomes_resolved_total";
/// Appends answered with an earlier request's result.
pub const IDEMPOTENT_REPLAYS: &str = "auditledger_idempotent_replays_total";
/// Appends refused with 409.
pub const VERSION_CONFLICTS: &str = "auditledger_version_conflicts_total";
/// Last committed seq.
pub const HEAD_SEQ: &str = "auditledger_head_seq";
/// Subjects erased.
pub const ERASURES: &str = "auditledger_erasures_total";
/// Checkpoints signed.
pub const CHECKPOINTS: &str = "auditledger_checkpoints_total";
/// Newest checkpoint's tree size.
pub const CHECKPOINT_TREE_SIZE: &str = "auditledger_checkpoint_tree_size";
/// Failed checkpoint publications.
pub const WITNESS_FAILURES: &str = "auditledger_witness_failures_total";
/// Verifications that found tampering.
pub const KEY_ROTATIONS: &str = "auditledger_signing_key_rotations_total";
/// Verifications that found tampering.
pub const VERIFICATION_FAILURES: &str = "auditledger_verification_failures_total";

/// The current KEK epoch.
pub const KEK_EPOCH: &str = "auditledger_kek_epoch";
/// Keys and links still wrapped under an older epoch.
pub const KEK_REWRAP_REMAINING: &str = "auditledger_kek_rewrap_remaining";
/// Keys and links re-wrapped.
pub const KEK_REWRAPPED: &str = "auditledger_kek_rewrapped_total";
/// Epochs destroyed.
pub const KEK_EPOCHS_DESTROYED: &str = "auditledger_kek_epochs_destroyed_total";
/// Erasures not yet cleaned from the live files.
pub const ERASURE_CLEANUP_PENDING: &str = "auditledger_erasure_cleanup_pending";
/// Cleanup attempts that something blocked.
pub const ERASURE_CLEANUP_BLOCKED: &str = "auditledger_erasure_cleanup_blocked_total";
/// Requests refused by access control, by `status` (401, 403) and `reason`.
pub const AUTH_REFUSALS: &str = "auditledger_auth_refusals_total";
/// Access entries appended, by `action` and `outcome`.
pub const ACCESS_ENTRIES: &str = "auditledger_access_entries_total";
/// Erasures refused because the subject is under a legal hold.
pub const ERASURES_HELD: &str = "auditledger_erasures_refused_hold_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls reuse it).
pub fn install() {
    // Live delivery as a histogram (counts since start, by bucket), not a summary: a summary's
    // quantiles cover a rolling window, and an operator (or the benchmark) compares how many
    // deliveries took longer than a bound over a run.
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(LIVE_DELIVERY_SECONDS.to_owned()),
            LIVE_DELIVERY_BUCKETS,
        )
        .unwrap_or_else(|_| PrometheusBuilder::new());
    HANDLE.get_or_init(|| match builder.install_recorder() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
            None
        }
    });
}

/// The current metrics in the Prometheus text format.
#[must_use]
pub fn render() -> String {
    match HANDLE.get().and_then(Option::as_ref) {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    }
}
