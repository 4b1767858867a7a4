//! KEK epochs (issue 9): an erasure is dated, and once its epoch is destroyed no copy of the
//! database — a backup, the WAL, PostgreSQL's dead tuples — gives back the subject's key or
//! links their identifier to their handle, read with every key that exists afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::too_many_lines, reason = "test code")]

mod common;

use std::path::Path;
use std::time::Duration;

use aho_corasick::AhoCorasick;
use auditledger::crypto::{Kek, KeyRef, SubjectIndexKey, WrappedKey};
use auditledger::entry::SubjectHandle;
use common::{Backend, Env, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ALICE: &str = "alice.canary@example.org";
const BOB: &str = "bob.control@example.org";

fn canary(i: usize) -> String {
    format!("CANARY-{i:03}-7f3a9c-IBAN-DE89370400440532013000")
}

async fn erase(s: &Server, subject: &str, reference: &str) -> (StatusCode, Value) {
    s.post_raw(
        "/v1/subjects/erase",
        json!({"subject": subject, "reason": "GDPR Art. 17(1)(a)", "request_ref": reference})
            .to_string(),
    )
    .await
}

async fn fill(s: &Server) {
    for i in 0..120 {
        let (code, body) = s
            .append(
                "acct-a",
                &json!({"events": [{"type": "CustomerUpdated", "subject": ALICE,
                    "data": {"note": canary(i)}, "metadata": {"channel": "web"}}]}),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    let (code, body) = s
        .append(
            "acct-b",
            &json!({"events": [{"type": "CustomerUpdated", "subject": BOB, "data": {"note": "bob"}}]}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
}

/// Every KEK file in the keys directory now.
fn present_keks(keys: &Path) -> Vec<Kek> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(keys.join("epochs")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        out.push(Kek::from_slice(&hex::decode(text.trim()).unwrap()).unwrap());
    }
    out
}

fn index_key(keys: &Path) -> SubjectIndexKey {
    let text = std::fs::read_to_string(keys.join("index.key")).unwrap();
    SubjectIndexKey::from_slice(&hex::decode(text.trim()).unwrap()).unwrap()
}

async fn epochs_destroyed(env: &Env, upto: u32) -> bool {
    env.sql_count(&format!(
        "SELECT COUNT(*) FROM kek_epochs WHERE epoch <= {upto} AND destroyed_at IS NULL"
    ))
    .await
        == 0
}

async fn a_backup_from_before_the_erasure_neither_decrypts_nor_relinks_once_the_epoch_ends(
    b: Backend,
) {
    let env = Env::new(b).await;
    let s = env.serve(&[]).await;
    fill(&s).await;
    let keys = env.path().join("keys");

    // The backup, as an attacker who later obtains it holds it.
    let backup_keys = env
        .sql_rows("SELECT key_ref, wrapped, kek_id FROM data_keys")
        .await;
    let backup_links = env
        .sql_rows("SELECT index_mac, sealed_handle, kek_id FROM subject_links")
        .await;
    let epoch1 = present_keks(&keys);
    assert_eq!(epoch1.len(), 1);

    let (code, receipt) = erase(&s, ALICE, "DSR-epoch-1").await;
    assert_eq!(code, StatusCode::OK, "{receipt}");
    assert_eq!(receipt["epoch"], 1);
    let erased_at =
        auditledger::timefmt::parse_rfc3339(receipt["erased_at"].as_str().unwrap()).unwrap();
    let forgotten_by =
        auditledger::timefmt::parse_rfc3339(receipt["forgotten_by"].as_str().unwrap()).unwrap();
    let week_and_an_hour = (168 + 1) * 3_600_000_000_i64;
    assert!(forgotten_by > erased_at && forgotten_by <= erased_at + week_and_an_hour);
    assert_eq!(receipt["caches_cleared_within_ms"], 2000);
    let seq = receipt["erasure_seq"].as_u64().unwrap();
    let alice = SubjectHandle::from_hex(receipt["subject_handle"].as_str().unwrap()).unwrap();

    // Positive control: with the backup's own epoch KEK, the backup does link and decrypt.
    let mac = index_key(&keys).index(ALICE);
    let link = backup_links
        .iter()
        .find(|(m, _, _)| m.as_slice() == mac)
        .expect("the backup holds alice's link");
    assert_eq!(epoch1[0].open_link(&link.1, &mac).unwrap(), alice);
    let alice_ref = KeyRef::Subject(alice);
    let alice_row = backup_keys
        .iter()
        .find(|(r, _, _)| r.as_slice() == alice_ref.to_bytes())
        .expect("the backup holds alice's key");
    assert!(
        epoch1[0]
            .unwrap(&WrappedKey(alice_row.1.clone()), &alice_ref)
            .is_ok()
    );

    let (_, _, status) = s.get(&format!("/v1/subjects/erasures/{seq}")).await;
    assert_ne!(status["status"]["state"], "forgotten", "{status}");
    assert_eq!(
        status["receipt"], receipt,
        "the receipt is given again, unchanged"
    );

    // The epoch ends: rotate-kek asks the running service and waits.
    let (code, out, err) = env.cli(&["rotate-kek", "--timeout-secs", "60"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("destroyed epochs: [1]"), "{out}");
    assert!(!keys.join("epochs/1.kek").exists());
    assert!(epochs_destroyed(&env, 1).await);
    let (_, _, status) = s.get(&format!("/v1/subjects/erasures/{seq}")).await;
    assert_eq!(status["status"]["state"], "forgotten", "{status}");
    assert!(status["status"]["forgotten_at"].is_string(), "{status}");
    assert_eq!(status["receipt"], receipt);

    // The attacker: the backup, and every key that exists now.
    let now = present_keks(&keys);
    assert!(!now.is_empty());
    for kek in &now {
        assert!(kek.open_link(&link.1, &mac).is_err(), "alice's link opens");
        for (key_ref, wrapped, _) in &backup_keys {
            let key_ref = KeyRef::from_bytes(key_ref).unwrap();
            assert!(
                kek.unwrap(&WrappedKey(wrapped.clone()), &key_ref).is_err(),
                "a backup key unwraps under a key that exists after the epoch ended"
            );
        }
        for (m, sealed, _) in &backup_links {
            let m: [u8; 32] = m.as_slice().try_into().unwrap();
            assert!(kek.open_link(sealed, &m).is_err(), "a backup link opens");
        }
    }

    // Bob, and the ledger, are untouched.
    let events = s.all_events().await;
    let bob = events.iter().find(|e| e["stream_id"] == "acct-b").unwrap();
    assert_eq!(bob["data"]["note"], "bob");
    assert!(
        events
            .iter()
            .filter(|e| e["stream_id"] == "acct-a")
            .all(|e| e["erased"] == true)
    );

    // The live files: no canary, no identifier anywhere; on SQLite not the wrapped key either,
    // and on PostgreSQL any copy of it that VACUUM left in a page or the WAL opens with no key
    // that exists now.
    common::wait_until(
        "the live files to be cleaned",
        Duration::from_secs(30),
        async || {
            let (_, _, st) = s.get(&format!("/v1/subjects/erasures/{seq}")).await;
            st["status"]["live_cleaned_at"].is_string()
        },
    )
    .await;
    s.terminate().await;
    assert_eq!(env.cli(&["verify"]).0, 0);
    // One pass over each file for all the needles (the PostgreSQL WAL alone is 80 MB or more).
    let needles: Vec<Vec<u8>> = (0..120)
        .map(|i| canary(i).into_bytes())
        .chain([ALICE.as_bytes().to_vec()])
        .collect();
    let needles = AhoCorasick::new(&needles).unwrap();
    let wrapped = &alice_row.1;
    let wrapped_key = AhoCorasick::new([wrapped]).unwrap();
    for path in env.database_files().await {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        assert!(
            !needles.is_match(&bytes),
            "{} holds a canary or the identifier",
            path.display()
        );
        if wrapped_key.is_match(&bytes) {
            assert_eq!(
                b,
                Backend::Postgres,
                "{} holds alice's wrapped key",
                path.display()
            );
            for kek in &now {
                assert!(
                    kek.unwrap(&WrappedKey(wrapped.clone()), &alice_ref)
                        .is_err()
                );
            }
        }
    }
}

async fn a_receipt_lost_in_a_crash_is_fetched_again_with_tombstones_off(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&["--erasure-tombstone-hours", "0"]).await;
    fill(&s).await;
    let (code, receipt) = erase(&s, ALICE, "DSR lost/1").await;
    assert_eq!(code, StatusCode::OK);
    s.kill9().await;
    let s = env.serve(&["--erasure-tombstone-hours", "0"]).await;
    // The identifier no longer leads anywhere...
    let (code, problem) = erase(&s, ALICE, "DSR lost/1").await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{problem}");
    assert!(!problem.to_string().contains(ALICE));
    // ...but the request reference gives the receipt back, signature and all.
    let (code, _, list) = s
        .get("/v1/subjects/erasures?request_ref=DSR%20lost%2F1")
        .await;
    assert_eq!(code, StatusCode::OK, "{list}");
    assert_eq!(list["erasures"].as_array().unwrap().len(), 1);
    assert_eq!(list["erasures"][0]["receipt"], receipt);
    let (code, _, none) = s.get("/v1/subjects/erasures?request_ref=nothing").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(none["erasures"], json!([]));
    // Not an erasure, and beyond the head: 404 problem+json.
    for seq in [0, 9999] {
        let (code, _, p) = s.get(&format!("/v1/subjects/erasures/{seq}")).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{p}");
        assert_eq!(p["status"], 404);
    }
    s.terminate().await;
}

async fn a_tombstone_dies_with_its_epoch(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&[]).await;
    fill(&s).await;
    let (_, first) = erase(&s, ALICE, "DSR-T").await;
    let (code, again) = erase(&s, ALICE, "DSR-T").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        again, first,
        "within the window and the epoch: the first receipt"
    );
    assert_eq!(
        env.sql_count("SELECT COUNT(*) FROM erasure_tombstones")
            .await,
        1
    );
    let (code, out, err) = env.cli(&["rotate-kek", "--timeout-secs", "60"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        env.sql_count("SELECT COUNT(*) FROM erasure_tombstones")
            .await,
        0
    );
    let (code, _) = erase(&s, ALICE, "DSR-T").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (_, _, list) = s.get("/v1/subjects/erasures?request_ref=DSR-T").await;
    assert_eq!(list["erasures"][0]["receipt"], first);
    s.terminate().await;
}

async fn epochs_end_on_schedule_while_appends_go_on(b: Backend) {
    let env = Env::new(b).await;
    // 0.0005 h = 1.8 s.
    let s = env
        .serve(&["--kek-epoch-hours", "0.0005", "--kek-rewrap-batch", "7"])
        .await;
    fill(&s).await;
    let mut acked = 0;
    let started = std::time::Instant::now();
    while !epochs_destroyed(&env, 2).await {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "epochs did not rotate"
        );
        let (code, body) = s
            .append(
                "acct-c",
                &json!({"events": [{"type": "Opened", "subject": format!("cust-{acked}@example.org"), "data": {"i": acked}}]}),
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
        acked += 1;
    }
    // The files go just after the database records the destruction.
    common::wait_until(
        "epochs 1 and 2's KEK files to be destroyed",
        Duration::from_secs(10),
        async || {
            !env.path().join("keys/epochs/1.kek").exists()
                && !env.path().join("keys/epochs/2.kek").exists()
        },
    )
    .await;
    let events = s.all_events().await;
    assert_eq!(events.len(), 121 + acked);
    assert!(
        events
            .iter()
            .all(|e| e["erased"] == false && !e["data"].is_null())
    );
    let text = s.metrics().await;
    assert!(text.contains("auditledger_kek_epoch"), "{text}");
    s.terminate().await;
    assert_eq!(env.cli(&["verify"]).0, 0);
}

async fn a_rotation_killed_halfway_finishes_after_restart_and_loses_nothing(b: Backend) {
    let env = Env::new(b).await;
    let flags = ["--kek-rewrap-batch", "1"];
    let s = env.serve(&flags).await;
    for r in 0..3 {
        let events: Vec<Value> = (0..100)
            .map(|i| json!({"type": "Opened", "subject": format!("cust-{r}-{i}@example.org"), "data": {"i": i}}))
            .collect();
        let (code, body) = s.append("acct-k", &json!({"events": events})).await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
    }
    let before = s.all_events().await;
    let epoch1: String = {
        let rows = env
            // Before any rotation, every key is under epoch 1.
            .sql_rows("SELECT key_ref, wrapped, kek_id FROM data_keys")
            .await;
        rows[0].2.clone()
    };
    let under_epoch1 = format!(
        "SELECT (SELECT COUNT(*) FROM data_keys WHERE kek_id = '{epoch1}') + \
                (SELECT COUNT(*) FROM subject_links WHERE kek_id = '{epoch1}')"
    );
    let total = env.sql_count(&under_epoch1).await;
    assert_eq!(total, 601, "300 keys, 300 links, the system key");
    // Ask the running service, as rotate-kek does, and kill it half-way.
    std::fs::write(env.path().join("keys/kek.rotate"), "1\n").unwrap();
    common::wait_until(
        "the re-wrap to be under way",
        Duration::from_secs(30),
        async || {
            let left = env.sql_count(&under_epoch1).await;
            left < total - 20
        },
    )
    .await;
    s.kill9().await;
    let left = env.sql_count(&under_epoch1).await;
    assert!(left > 0, "killed too late to test resumption");
    assert!(
        env.path().join("keys/epochs/1.kek").exists(),
        "epoch 1 still needed"
    );
    // After the restart the service finishes by itself; nothing was lost.
    let s = env.serve(&flags).await;
    common::wait_until(
        "epoch 1 to be destroyed",
        Duration::from_secs(60),
        async || epochs_destroyed(&env, 1).await && !env.path().join("keys/epochs/1.kek").exists(),
    )
    .await;
    assert_eq!(env.sql_count(&under_epoch1).await, 0);
    assert_eq!(s.all_events().await, before);
    s.terminate().await;
    assert_eq!(env.cli(&["verify"]).0, 0);
}

/// Epochs start and end while several callers keep the writer busy with new subjects, so that
/// batches are prepared ahead of the one committing, with the epoch read outside the lock: no
/// key or link is ever left under an epoch that was destroyed, and every event stays readable.
async fn epochs_end_under_a_pipelined_load_of_new_subjects(b: Backend) {
    let env = Env::new(b).await;
    let s = std::sync::Arc::new(
        env.serve(&["--kek-epoch-hours", "0.0005", "--kek-rewrap-batch", "100"])
            .await,
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6 {
        let (s, stop) = (std::sync::Arc::clone(&s), std::sync::Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            let mut acked = 0usize;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (code, body) = s
                    .append(
                        &format!("acct-{w}"),
                        &json!({"events": [
                            {"type": "Opened", "subject": format!("w{w}-{acked}@example.org"), "data": {"i": acked}},
                            {"type": "Noted", "subject": format!("w{w}-{acked}-b@example.org"), "data": {"i": acked}},
                        ]}),
                    )
                    .await;
                assert_eq!(code, StatusCode::CREATED, "{body}");
                acked += 2;
                // Enough callers for batches to overlap, few enough keys to re-wrap quickly.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        }));
    }
    let started = std::time::Instant::now();
    while !epochs_destroyed(&env, 2).await {
        if started.elapsed() > Duration::from_secs(90) {
            let rows = env
                .sql_rows(
                    "SELECT CAST(e.epoch AS TEXT), CAST(COUNT(k.key_ref) AS TEXT), \
                     COALESCE(CAST(e.destroyed_at AS TEXT), 'live') FROM kek_epochs e \
                     LEFT JOIN data_keys k ON k.kek_id = e.kek_id GROUP BY e.epoch, e.destroyed_at",
                )
                .await;
            let rows: Vec<_> = rows
                .iter()
                .map(|(a, b, c)| {
                    (
                        String::from_utf8_lossy(a).into_owned(),
                        String::from_utf8_lossy(b).into_owned(),
                        c.clone(),
                    )
                })
                .collect();
            panic!("epochs did not rotate: {rows:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acked = 0;
    for w in writers {
        acked += w.await.unwrap();
    }
    // Nothing live is wrapped under a destroyed epoch (a key made under an epoch read without
    // the lock and landed after that epoch ended would be).
    for table in ["data_keys", "subject_links"] {
        assert_eq!(
            env.sql_count(&format!(
                "SELECT COUNT(*) FROM {table} WHERE kek_id IN \
                 (SELECT kek_id FROM kek_epochs WHERE destroyed_at IS NOT NULL)"
            ))
            .await,
            0,
            "{table} under a destroyed epoch"
        );
    }
    let events = s.all_events().await;
    assert_eq!(events.len(), acked);
    assert!(
        events
            .iter()
            .all(|e| e["erased"] == false && !e["data"].is_null()),
        "every event still opens"
    );
    std::sync::Arc::try_unwrap(s)
        .ok()
        .unwrap()
        .terminate()
        .await;
    assert_eq!(env.cli(&["verify"]).0, 0);
}

on_both_backends!(
    a_rotation_killed_halfway_finishes_after_restart_and_loses_nothing,
    a_backup_from_before_the_erasure_neither_decrypts_nor_relinks_once_the_epoch_ends,
    a_receipt_lost_in_a_crash_is_fetched_again_with_tombstones_off,
    a_tombstone_dies_with_its_epoch,
    epochs_end_on_schedule_while_appends_go_on,
    epochs_end_under_a_pipelined_load_of_new_subjects,
);
