//! No false alarms: a verification checks the ledger as it stood at one moment, however long
//! it runs while appends and checkpoints continue; a range that starts beyond the head is
//! refused, not answered with a signed failure or an unusable bundle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::too_many_lines, reason = "test code")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use auditledger::entry::Seq;
use auditledger::verify::TrustedKeys;
use common::{Backend, Env, Server, one_event};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Appends `n` events, `per_request` at a time.
async fn fill(s: &Server, n: usize, per_request: usize) {
    let mut i = 0;
    while i < n {
        let events: Vec<Value> = (i..n.min(i + per_request))
            .map(|j| json!({"type": "Fill", "data": {"j": j}}))
            .collect();
        let (status, body) = s
            .append(&format!("fill-{}", i % 3), &json!({ "events": events }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        i += per_request;
    }
}

/// The ledger's size as the API reports it.
async fn size(s: &Server) -> u64 {
    let (status, _, head) = s.get("/v1/checkpoints/latest").await;
    assert_eq!(status, StatusCode::OK, "{head}");
    head["tree_size"].as_u64().unwrap()
}

/// Appends one event at a time from `writers` tasks until `stop` is set; with
/// `--checkpoint-every 1` every commit also makes a checkpoint.
fn keep_appending(
    s: &Arc<Server>,
    writers: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..writers)
        .map(|w| {
            let (s, stop) = (Arc::clone(s), Arc::clone(stop));
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (status, body) = s
                        .append(&format!("race-{w}"), &one_event("Race", json!({"n": n})))
                        .await;
                    assert_eq!(status, StatusCode::CREATED, "{body}");
                    n += 1;
                }
                n
            })
        })
        .collect()
}

async fn a_verification_racing_appends_with_a_checkpoint_after_every_entry_stays_ok(b: Backend) {
    let env = Env::new(b).await;
    let s = Arc::new(env.serve(&["--checkpoint-every", "1"]).await);
    fill(&s, 2000, 100).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = keep_appending(&s, 3, &stop);
    // Each round must overlap commits (and so checkpoints) for the test to mean anything:
    // count the rounds during which the ledger grew.
    let mut overlapped = 0;
    for round in 0..8 {
        let before = size(&s).await;
        let (status, _, report) = s.get("/v1/audit/verify").await;
        let after = size(&s).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(
            report["first_failure"],
            Value::Null,
            "round {round}: a verification of an intact ledger failed: {report}"
        );
        assert_eq!(report["ok"], true, "{report}");
        let checked = report["entries_checked"].as_u64().unwrap();
        assert!(
            checked >= before && checked <= after,
            "{checked} not in {before}..={after}"
        );
        if after > before {
            overlapped += 1;
        }
    }
    for round in 0..3 {
        let (code, out, err) = env.cli(&["verify"]);
        assert_eq!(
            code, 0,
            "round {round}: `verify` of an intact ledger failed: {out}{err}"
        );
        assert!(out.starts_with("ok: "), "{out}");
    }
    stop.store(true, Ordering::Relaxed);
    let mut appended = 0;
    for w in writers {
        appended += w.await.unwrap();
    }
    assert!(appended > 0);
    assert!(
        overlapped >= 4,
        "only {overlapped} of 8 verifications overlapped a commit: the race was not exercised"
    );
    // Once the writers stop, the whole ledger (every entry and checkpoint the race made)
    // verifies, from the server and from the CLI.
    let total = size(&s).await;
    let (status, _, report) = s.get("/v1/audit/verify").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["entries_checked"], json!(total), "{report}");
    Arc::try_unwrap(s).ok().unwrap().terminate().await;
    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 0, "`verify` after the race: {out}{err}");
}

async fn a_checkpoint_made_after_the_snapshot_was_taken_does_not_count(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&["--checkpoint-every", "1"]).await;
    fill(&s, 30, 1).await;
    let dirs = auditledger::config::Dirs {
        data_dir: env.path().join("data"),
        keys_dir: env.path().join("keys"),
        database_url: env.pg.as_ref().map(|p| p.url.clone()),
        database_pool_size: 2,
        sqlite_max_db_mib: None,
    };
    let (store, _lock) = auditledger::backend::open(&dirs, auditledger::backend::Access::ReadOnly)
        .await
        .unwrap();
    let mut keys = TrustedKeys::new();
    keys.insert(
        auditledger::keyfiles::read_public_key(&env.path().join("keys/signing.pub")).unwrap(),
    );
    let snapshot = auditledger::audit::Snapshot::take(store.as_ref())
        .await
        .unwrap();
    assert_eq!(snapshot.size, 30);
    // Entries and checkpoints land after the snapshot, before its verification runs.
    fill(&s, 5, 1).await;
    s.post_raw("/v1/checkpoints", "").await;
    assert_eq!(size(&s).await, 35);
    let trust = auditledger::audit::AuditTrust {
        keys,
        ledger_id: auditledger::keyfiles::read_ledger_id(&env.path().join("keys"))
            .unwrap()
            .unwrap(),
    };
    let report = auditledger::audit::verify_snapshot(
        Arc::clone(&store),
        trust,
        &snapshot,
        Seq(0),
        None,
        Arc::default(),
    )
    .await
    .unwrap()
    .report;
    assert_eq!(report.first_failure, None, "{report:?}");
    assert_eq!(
        (
            report.to_seq,
            report.entries_checked,
            report.checkpoints_checked
        ),
        (Some(29), 30, 30)
    );
    store.close().await;
    s.terminate().await;
}

/// The body of a 400 problem, checked for its type and that it names the ledger's size.
async fn assert_beyond_head(r: reqwest::Response, size: u64) {
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: Value = r.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("beyond the head"), "{body}");
    assert!(detail.contains(&format!("{size} entries")), "{body}");
}

async fn a_range_starting_beyond_the_head_is_refused_not_reported_as_tampering(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&["--checkpoint-every", "4"]).await;
    fill(&s, 10, 1).await;
    // Up to the largest position the API takes (2^63-1; beyond it the parameter itself is refused).
    for from in [11, 12, 1000, i64::MAX.cast_unsigned()] {
        let r = s
            .client
            .get(s.url(&format!("/v1/audit/verify?from_seq={from}")))
            .send()
            .await
            .unwrap();
        assert_beyond_head(r, 10).await;
        let r = s
            .client
            .get(s.url(&format!("/v1/audit/verify?from_seq={from}&async=true")))
            .send()
            .await
            .unwrap();
        assert_beyond_head(r, 10).await;
        let r = s
            .client
            .get(s.url(&format!("/v1/export?from_seq={from}")))
            .send()
            .await
            .unwrap();
        assert_beyond_head(r, 10).await;
        let out = env.path().join(format!("beyond-{from}.ndjson"));
        let (code, stdout, stderr) = env.cli(&[
            "export",
            "--out",
            out.to_str().unwrap(),
            "--from-seq",
            &from.to_string(),
        ]);
        assert_eq!(code, 2, "{stdout}{stderr}");
        assert!(
            stderr.contains(&format!("from_seq {from} is beyond the head"))
                && stderr.contains("10 entries"),
            "{stderr}"
        );
        assert!(!out.exists(), "a refused export left a file behind");
    }
    // Starting right after the head is an empty range: nothing to verify, nothing wrong.
    let (status, _, report) = s.get("/v1/audit/verify?from_seq=10").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (&report["ok"], &report["to_seq"], &report["entries_checked"]),
        (&json!(true), &Value::Null, &json!(0)),
        "{report}"
    );
    let r = s
        .client
        .get(s.url("/v1/export?from_seq=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let out = env.path().join("at-head.ndjson");
    let (code, stdout, stderr) =
        env.cli(&["export", "--out", out.to_str().unwrap(), "--from-seq", "10"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // Ranges inside the ledger are unaffected.
    let (status, _, report) = s.get("/v1/audit/verify?from_seq=9").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (&report["ok"], &report["entries_checked"]),
        (&json!(true), &json!(1))
    );
    s.terminate().await;
}

on_both_backends!(
    a_verification_racing_appends_with_a_checkpoint_after_every_entry_stays_ok,
    a_checkpoint_made_after_the_snapshot_was_taken_does_not_count,
    a_range_starting_beyond_the_head_is_refused_not_reported_as_tampering,
);
