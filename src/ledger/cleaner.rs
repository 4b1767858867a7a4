//! placeholder
use std::time::Duration;
/// How often every instance polls for erasures.
pub const FORGET_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Bound.
pub const CACHES_CLEARED_WITHIN_MS: u64 = 2000;
