//! No false alarms (issue 8, item 6): a verification that runs while appends continue, with a
//! checkpoint after every entry, reports ok on an intact ledger, on both backends. Today the
//! server reads the head when it starts and the latest checkpoint when it ends, so a checkpoint
//! made in between covers entries it never read and it reports `truncated`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, Env, load};
use reqwest::StatusCode;

async fn a_verification_racing_appends_with_a_checkpoint_after_every_entry_stays_ok(b: Backend) {
    let env = Env::new(b).await;
    let s = Arc::new(env.serve(&["--checkpoint-every", "1"]).await);
    // Some history first, so that each verification takes long enough to be overtaken.
    let before = load(Arc::clone(&s), "before", 4, Duration::from_secs(5)).await;
    assert!(!before.is_empty());
    let appends = tokio::spawn(load(Arc::clone(&s), "during", 2, Duration::from_secs(10)));
    let mut reports = Vec::new();
    while !appends.is_finished() {
        let (status, _, report) = s.get("/v1/audit/verify").await;
        assert_eq!(status, StatusCode::OK, "{report}");
        reports.push(report);
    }
    let during = appends.await.unwrap();
    assert!(!during.is_empty(), "the appends made no progress");
    let false_alarms: Vec<String> = reports
        .iter()
        .filter(|r| r["ok"] != true)
        .map(|r| r["first_failure"].to_string())
        .collect();
    assert!(
        false_alarms.is_empty(),
        "{} of {} verifications of an intact ledger failed while appends ran: {}",
        false_alarms.len(),
        reports.len(),
        false_alarms.join("; ")
    );
    let (_, _, last) = s.get("/v1/audit/verify").await;
    assert_eq!(last["ok"], true, "{last}");
}

on_both_backends!(a_verification_racing_appends_with_a_checkpoint_after_every_entry_stays_ok);
