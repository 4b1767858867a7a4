//! Per-subject keys, erasure by crypto-shredding, subject access, KEK rotation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::needless_pass_by_value,
    clippy::too_many_lines,
    reason = "test code"
)]

mod common;

use std::path::Path;
use std::sync::Arc;

use auditledger::crypto::{PublicKey, Signature, SubjectIndexKey};
use auditledger::entry::{EntryHash, Seq, SubjectHandle};
use auditledger::receipt::ReceiptFacts;
use common::{Backend, Env, Server, raw_db, run_cli, workdir};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ALICE: &str = "alice.wonderland@example.com";
const ALICE_SECRET: &str = "ALICE-PLAINTEXT-IBAN-DE89370400440532013000";
const BOB: &str = "customer-000042";

fn subject_event(subject: &str, data: Value) -> Value {
    json!({"type": "CustomerUpdated", "subject": subject, "data": data, "metadata": {"source": "crm"}})
}

async fn erase(s: &Server, subject: &str, reference: &str) -> (StatusCode, Value) {
    s.post_raw(
        "/v1/subjects/erase",
        json!({"subject": subject, "reason": "GDPR Art. 17(1)(a)", "request_ref": reference})
            .to_string(),
    )
    .await
}

/// Every file under `dir` except the keys, as (path, bytes).
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().unwrap() != "keys" {
                out.extend(files_under(&path));
            }
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn assert_absent(dir: &Path, needle: &[u8], what: &str) {
    for (path, bytes) in files_under(dir) {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{what} found in {path}"
        );
    }
}

fn index_key(dir: &Path) -> SubjectIndexKey {
    let text = std::fs::read_to_string(dir.join("keys/index.key")).unwrap();
    SubjectIndexKey::from_slice(&hex::decode(text.trim()).unwrap()).unwrap()
}

#[tokio::test]
async fn each_subject_gets_its_own_handle_and_key_and_its_identifier_is_never_stored() {
    let dir = workdir();
    let s = Server::start_with_log(dir.path(), &[], "debug").await;
    let (status, body) = s
        .append(
            "crm-1",
            &json!({"events": [
                subject_event(ALICE, json!({"iban": ALICE_SECRET})),
                subject_event(BOB, json!({"phone": "+44 20 7946 0000"})),
                subject_event(ALICE, json!({"city": "Oxford"})),
                {"type": "BatchClosed", "data": {"n": 3}},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let events = s.all_events().await;
    let handle = |i: usize| events[i]["subject"].as_str().map(str::to_owned);
    let alice = handle(0).unwrap();
    assert_eq!(alice.len(), 32);
    assert_eq!(handle(2).as_deref(), Some(alice.as_str()));
    assert_ne!(handle(1).unwrap(), alice);
    assert_eq!(handle(3), None);
    assert_eq!(events[0]["data"]["iban"], ALICE_SECRET);
    for e in &events {
        assert!(!e.to_string().contains(ALICE) && !e.to_string().contains(BOB));
    }
    let db = raw_db(dir.path()).await;
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_keys")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(keys, 3, "the system key and one key per subject");
    db.close().await;
    s.terminate().await;
    assert_absent(dir.path(), ALICE.as_bytes(), "alice's identifier");
    assert_absent(dir.path(), BOB.as_bytes(), "bob's identifier");
    assert_absent(dir.path(), ALICE_SECRET.as_bytes(), "alice's plaintext");
}

#[tokio::test]
async fn erasure_forgets_the_subject_everywhere_while_the_chain_still_verifies() {
    let dir = workdir();
    let s = Server::start_with_log(dir.path(), &[], "debug").await;
    s.append(
        "crm-1",
        &json!({"events": [subject_event(ALICE, json!({"iban": ALICE_SECRET}))]}),
    )
    .await;
    s.append(
        "crm-2",
        &json!({"events": [subject_event(BOB, json!({"phone": "+44"}))]}),
    )
    .await;
    s.append(
        "crm-1",
        &json!({"events": [subject_event(ALICE, json!({"city": "Oxford"}))]}),
    )
    .await;
    let before = s.all_events().await;
    let alice_handle = before[0]["subject"].as_str().unwrap().to_owned();

    // What an attacker with the file would look for after erasure: the wrapped key bytes and
    // the index row's MAC.
    let db = raw_db(dir.path()).await;
    let mut key_ref = vec![1u8];
    key_ref.extend(hex::decode(&alice_handle).unwrap());
    let wrapped: Vec<u8> = sqlx::query_scalar("SELECT wrapped FROM data_keys WHERE key_ref = ?")
        .bind(&key_ref)
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    let index_mac = index_key(dir.path()).index(ALICE);

    let (status, receipt) = erase(&s, ALICE, "DSR-2026-0042").await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(receipt["subject_handle"], alice_handle);
    // Seqs 0-2 are the appends, 3 the access entry of the read above.
    assert_eq!(receipt["erasure_seq"], 4);
    assert_eq!(receipt["request_ref"], "DSR-2026-0042");
    assert!(!receipt.to_string().contains(ALICE));

    // The receipt verifies under the published key.
    let (_, _, keys) = s.get("/v1/keys").await;
    let public = PublicKey::from_bytes(
        &hex::decode(keys["keys"][0]["public_key"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(receipt["key_id"], keys["keys"][0]["key_id"]);
    let after = s.all_events().await;
    let facts = ReceiptFacts {
        ledger_id: auditledger::entry::LedgerId::from_hex(receipt["ledger_id"].as_str().unwrap())
            .unwrap(),
        subject_handle: SubjectHandle::from_hex(&alice_handle).unwrap(),
        erased_at_micros: auditledger::timefmt::parse_rfc3339(
            receipt["erased_at"].as_str().unwrap(),
        )
        .unwrap(),
        erasure_seq: Seq(4),
        erasure_entry_hash: EntryHash::from_hex(receipt["erasure_entry_hash"].as_str().unwrap())
            .unwrap(),
        request_ref: "DSR-2026-0042".to_owned(),
        epoch: u32::try_from(receipt["epoch"].as_u64().unwrap()).unwrap(),
        forgotten_by_micros: auditledger::timefmt::parse_rfc3339(
            receipt["forgotten_by"].as_str().unwrap(),
        )
        .unwrap(),
    };
    let sig = Signature::from_hex(receipt["signature"].as_str().unwrap()).unwrap();
    assert!(
        facts.verify(&public, &sig).is_ok(),
        "the receipt signature must verify"
    );
    assert_eq!(after[3]["entry_hash"], receipt["erasure_entry_hash"]);

    // Alice's events: headers intact, data gone. Bob's untouched. The erasure entry says what
    // happened, under the system key, without the identifier.
    for i in [0, 2] {
        assert_eq!(after[i]["data"], Value::Null);
        assert_eq!(after[i]["erased"], true);
        for f in [
            "seq",
            "stream_id",
            "stream_version",
            "type",
            "subject",
            "recorded_at",
            "metadata",
            "entry_hash",
            "signature",
        ] {
            assert_eq!(after[i][f], before[i][f], "{f} changed");
        }
    }
    assert_eq!(after[1], before[1]);
    let erased_entry = &after[3];
    assert_eq!(erased_entry["type"], "SubjectErased");
    assert_eq!(erased_entry["stream_id"], "auditledger:subject-erasures");
    assert_eq!(erased_entry["subject"], alice_handle);
    assert_eq!(erased_entry["data"]["subject_handle"], alice_handle);
    assert_eq!(erased_entry["data"]["request_ref"], "DSR-2026-0042");
    assert_eq!(erased_entry["data"]["reason"], "GDPR Art. 17(1)(a)");
    let (_, _, page) = s.get("/v1/streams/crm-1/events").await;
    assert_eq!(page["events"][0]["erased"], true);

    // Access requests for Alice now find nothing; Bob's still work.
    let (status, _) = s
        .post_raw("/v1/subjects/export", json!({"subject": ALICE}).to_string())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, bob) = s
        .post_raw("/v1/subjects/export", json!({"subject": BOB}).to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bob["events"][0]["data"]["phone"], "+44");

    let (code, out, err) = run_cli(dir.path(), &["verify"]);
    assert_eq!(code, 0, "{out}{err}");

    // Nothing that could bring Alice back is anywhere in the data directory or the logs,
    // while the server runs (WAL included) and after it stops.
    let scan = |when: &str| {
        assert_absent(
            dir.path(),
            ALICE.as_bytes(),
            &format!("identifier ({when})"),
        );
        assert_absent(
            dir.path(),
            ALICE_SECRET.as_bytes(),
            &format!("plaintext ({when})"),
        );
        assert_absent(dir.path(), &wrapped, &format!("wrapped key ({when})"));
        assert_absent(dir.path(), &index_mac, &format!("index MAC ({when})"));
    };
    // The live files are cleaned beside the writer, just after the erasure's commit.
    common::wait_until(
        "the erasure to be cleaned from the live files",
        std::time::Duration::from_secs(15),
        async || {
            let db = raw_db(dir.path()).await;
            let n: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM erased_subjects WHERE cleaned_at IS NULL")
                    .fetch_one(&db)
                    .await
                    .unwrap();
            db.close().await;
            n == 0
        },
    )
    .await;
    scan("server running");
    s.terminate().await;
    scan("server stopped");

    // And a restart does not bring anything back.
    let s = Server::start(dir.path(), &[]).await;
    let again = s.all_events().await;
    assert_eq!(again[0]["erased"], true);
    assert_eq!(again[1]["data"]["phone"], "+44");
    s.terminate().await;
}

async fn erasing_again_returns_the_first_receipt_and_appends_nothing(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&[]).await;
    s.append(
        "c",
        &json!({"events": [subject_event(BOB, json!({"n": 1}))]}),
    )
    .await;
    let (s1, first) = erase(&s, BOB, "DSR-1").await;
    assert_eq!(s1, StatusCode::OK);
    let count = s.all_events().await.len();
    let (s2, second) = erase(&s, BOB, "DSR-1-retry").await;
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(
        second, first,
        "a repeated erasure returns the first receipt"
    );
    assert_eq!(s.all_events().await.len(), count, "and appends nothing");
    let (status, problem) = erase(&s, "never-seen@example.com", "DSR-2").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert_eq!(problem["type"], "urn:auditledger:problem:not-found");
    assert!(!problem.to_string().contains("never-seen"));
    assert_eq!(s.all_events().await.len(), count);
    s.terminate().await;
}

async fn without_tombstones_a_repeated_erasure_is_an_unknown_subject(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&["--erasure-tombstone-hours", "0"]).await;
    s.append(
        "c",
        &json!({"events": [subject_event(BOB, json!({"n": 1}))]}),
    )
    .await;
    assert_eq!(erase(&s, BOB, "DSR-1").await.0, StatusCode::OK);
    assert_eq!(erase(&s, BOB, "DSR-1").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        env.sql_count("SELECT COUNT(*) FROM erasure_tombstones")
            .await,
        0
    );
    s.terminate().await;
}

async fn bad_subject_requests_are_refused_and_write_nothing(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&[]).await;
    s.append(
        "c",
        &json!({"events": [subject_event(BOB, json!({"n": 1}))]}),
    )
    .await;
    let mut leaky = subject_event(BOB, json!({"n": 1}));
    leaky["metadata"] = json!({"email": BOB});
    let leaky_metadata = json!({"events": [leaky]});
    let cases = [
        (
            "/v1/subjects/erase",
            json!({"subject": BOB, "reason": "r"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "request_ref",
        ),
        (
            "/v1/subjects/erase",
            json!({"subject": "", "reason": "r", "request_ref": "x"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "subject",
        ),
        (
            "/v1/subjects/erase",
            json!({"subject": BOB, "reason": format!("asked by {BOB}"), "request_ref": "x"})
                .to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "reason",
        ),
        (
            "/v1/subjects/erase",
            "{".to_owned(),
            StatusCode::BAD_REQUEST,
            "JSON",
        ),
        (
            "/v1/subjects/export",
            json!({"subject": 5}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "subject",
        ),
        (
            "/v1/streams/x/events",
            leaky_metadata.to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "events[0].metadata",
        ),
        (
            "/v1/streams/x/events",
            json!({"events": [{"type": "A", "subject": "", "data": {}}]}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "events[0].subject",
        ),
        (
            "/v1/streams/auditledger:subject-erasures/events",
            json!({"events": [{"type": "SubjectErased", "data": {}}]}).to_string(),
            StatusCode::BAD_REQUEST,
            "stream_id",
        ),
    ];
    for (path, body, status, mention) in cases {
        let (got, problem) = s.post_raw(path, body).await;
        assert_eq!(got, status, "{path}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(mention),
            "{problem}"
        );
        assert!(
            !problem.to_string().contains(BOB),
            "an error must not echo the identifier: {problem}"
        );
    }
    assert_eq!(s.all_events().await.len(), 1);
    s.terminate().await;
}

async fn subject_access_returns_every_event_of_the_subject_in_order(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&[]).await;
    for i in 0..5 {
        s.append(
            &format!("acct-{i}"),
            &json!({"events": [
                subject_event(ALICE, json!({"i": i})),
                subject_event(BOB, json!({"i": i})),
            ]}),
        )
        .await;
    }
    let (status, export) = s
        .post_raw("/v1/subjects/export", json!({"subject": ALICE}).to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    let events = export["events"].as_array().unwrap();
    assert_eq!(events.len(), 5);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["data"]["i"], i);
        assert_eq!(e["subject"], export["subject_handle"]);
        assert_eq!(e["seq"], 2 * i as u64);
        assert_eq!(e["entry_hash"].as_str().unwrap().len(), 64);
    }
    let (_, page) = s
        .post_raw(
            "/v1/subjects/export",
            json!({"subject": ALICE, "from_seq": 3, "limit": 2}).to_string(),
        )
        .await;
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![4, 6]);
    assert_eq!(page["next_from_seq"], 7);
    s.terminate().await;
}

async fn after_erasure_the_same_identifier_starts_a_fresh_unlinked_subject(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&[]).await;
    s.append(
        "c",
        &json!({"events": [subject_event(ALICE, json!({"old": true}))]}),
    )
    .await;
    let (_, receipt) = erase(&s, ALICE, "DSR-9").await;
    s.append(
        "c",
        &json!({"events": [subject_event(ALICE, json!({"new": true}))]}),
    )
    .await;
    let events = s.all_events().await;
    assert_ne!(events[2]["subject"], receipt["subject_handle"]);
    assert_eq!(events[2]["data"]["new"], true);
    let (_, export) = s
        .post_raw("/v1/subjects/export", json!({"subject": ALICE}).to_string())
        .await;
    assert_eq!(
        export["events"].as_array().unwrap().len(),
        1,
        "old events are not linked to the new subject"
    );
    s.terminate().await;
}

async fn appends_racing_an_erasure_are_either_erased_or_under_a_fresh_handle_and_never_lost(
    b: Backend,
) {
    let env = Env::new(b).await;
    let s = Arc::new(env.serve(&[]).await);
    // Stream ids are pseudonymous: a subject's identifier in one is refused.
    s.append(
        "acct-c",
        &json!({"events": [subject_event("carol", json!({"n": -1}))]}),
    )
    .await;
    let mut writers = Vec::new();
    for w in 0..8 {
        let s = Arc::clone(&s);
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..40 {
                let (status, body) = s
                    .append(
                        &format!("acct-c-{w}"),
                        &json!({"events": [subject_event("carol", json!({"w": w, "n": n}))]}),
                    )
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                acked.push(body["first_seq"].as_u64().unwrap());
            }
            acked
        }));
    }
    // Erase once the writers are under way, so that appends land on both sides of it.
    s.wait_for_stream("acct-c-0", 1).await;
    let (status, receipt) = erase(&s, "carol", "DSR-race").await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    let erasure_seq = receipt["erasure_seq"].as_u64().unwrap();
    let old = receipt["subject_handle"].clone();
    let events = s.all_entries().await;
    let acked_before = acked.iter().filter(|s| **s < erasure_seq).count();
    for seq in acked {
        let e = &events[seq as usize];
        if seq < erasure_seq {
            assert_eq!(e["subject"], old);
            assert_eq!(e["erased"], true, "seq {seq} was before the erasure");
        } else {
            assert_ne!(
                e["subject"], old,
                "seq {seq} after the erasure must have a fresh handle"
            );
            assert_eq!(e["erased"], false);
            assert!(e["data"]["n"].is_number());
        }
    }
    assert!(
        acked_before > 0,
        "the erasure was meant to catch events of the subject"
    );
    // No event under the old handle is readable.
    assert!(
        events
            .iter()
            .filter(|e| e["subject"] == old && e["type"] != "SubjectErased")
            .all(|e| e["erased"] == true)
    );
    let (code, out, _) = env.cli(&["verify"]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn a_ciphertext_moved_into_another_entry_is_reported_as_tampering_not_data() {
    let dir = workdir();
    let s = Server::start(dir.path(), &[]).await;
    s.append(
        "c",
        &json!({"events": [
            subject_event(ALICE, json!({"a": 1})),
            subject_event(ALICE, json!({"a": 2})),
        ]}),
    )
    .await;
    s.terminate().await;
    let db = raw_db(dir.path()).await;
    sqlx::query("DROP TRIGGER entries_no_update")
        .execute(&db)
        .await
        .unwrap();
    // Move the payload and its digest, so only the header binding can tell.
    sqlx::query("UPDATE entries SET payload = (SELECT payload FROM entries WHERE seq = 0), payload_digest = (SELECT payload_digest FROM entries WHERE seq = 0) WHERE seq = 1")
        .execute(&db).await.unwrap();
    db.close().await;
    let s = Server::start(dir.path(), &[]).await;
    let (status, ct, problem) = s.get("/v1/events").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(ct, "application/problem+json");
    assert_eq!(problem["type"], "urn:auditledger:problem:integrity-failure");
    assert_eq!(problem["seq"], 1);
    s.terminate().await;
    let (code, out, _) = run_cli(dir.path(), &["verify"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAILED at seq 1: entry_hash_mismatch"),
        "{out}"
    );
}

async fn kek_rotation_rewraps_every_key_resumably_and_the_old_kek_can_be_deleted(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&[]).await;
    for i in 0..7 {
        s.append("r", &json!({"events": [subject_event(&format!("subject-{i}"), json!({"i": i})), {"type": "Plain", "data": {"i": i}}]})).await;
    }
    erase(&s, "subject-3", "DSR-3").await;
    let before = s.all_events().await;
    s.terminate().await;
    let epoch1 = env.path().join("keys/epochs/1.kek");
    let old_kek = std::fs::read_to_string(&epoch1).unwrap();

    // Interrupted after two batches of two rows (6 subject keys + the system key + 6 links)...
    let (code, out, err) = env.cli(&[
        "rotate-kek",
        "--batch-size",
        "2",
        "--stop-after-batches",
        "2",
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("stopped after 4 keys and links"), "{out}");
    assert!(epoch1.exists(), "epoch 1 is still needed");
    // ...and a second run finishes the job, without starting a third epoch.
    let (code, out, err) = env.cli(&["rotate-kek", "--batch-size", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("resuming the rotation to epoch 2"), "{err}");
    assert!(
        out.contains("KEK epoch 2 is current; 9 keys and links re-wrapped"),
        "{out}"
    );
    assert!(out.contains("destroyed epochs: [1]"), "{out}");
    assert!(!epoch1.exists(), "the old epoch's KEK is destroyed");
    let new_kek = std::fs::read_to_string(env.path().join("keys/epochs/2.kek")).unwrap();
    assert_ne!(new_kek, old_kek);
    for table in ["data_keys", "subject_links"] {
        assert_eq!(
            env.sql_count(&format!("SELECT COUNT(DISTINCT kek_id) FROM {table}"))
                .await,
            1,
            "every row of {table} under one KEK"
        );
    }

    // Everything still reads, nothing in the chain changed.
    let s = env.serve(&[]).await;
    assert_eq!(s.all_events().await, before);
    s.terminate().await;
    assert_eq!(env.cli(&["verify"]).0, 0);

    // A destroyed KEK put back (from a backup of the keys directory) is destroyed again at
    // start: the database says its epoch ended.
    std::fs::write(&epoch1, &old_kek).unwrap();
    let s = env.serve(&[]).await;
    assert!(!epoch1.exists());
    assert_eq!(s.all_events().await, before);
    s.terminate().await;
}

async fn erasing_an_identifier_reused_after_its_erasure_erases_the_new_subject_too(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&[]).await;
    s.append(
        "c",
        &json!({"events": [subject_event(ALICE, json!({"v": 1}))]}),
    )
    .await;
    let (_, first) = erase(&s, ALICE, "DSR-1").await;
    // The same person comes back: a fresh subject under the same identifier...
    s.append(
        "c",
        &json!({"events": [subject_event(ALICE, json!({"v": 2}))]}),
    )
    .await;
    // ...and asks again, within the tombstone window: this must erase the new data, not
    // answer with the old receipt.
    let (status, second) = erase(&s, ALICE, "DSR-2").await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(second["subject_handle"], first["subject_handle"]);
    assert_ne!(second["erasure_seq"], first["erasure_seq"]);
    let events = s.all_events().await;
    assert_eq!(
        events[2]["data"],
        Value::Null,
        "the reused identifier's new data must be erased"
    );
    assert_eq!(events[2]["erased"], true);
    // And now a repeat returns the second receipt.
    assert_eq!(erase(&s, ALICE, "DSR-2").await.1, second);
    s.terminate().await;
}

on_both_backends!(
    erasing_an_identifier_reused_after_its_erasure_erases_the_new_subject_too,
    erasing_again_returns_the_first_receipt_and_appends_nothing,
    without_tombstones_a_repeated_erasure_is_an_unknown_subject,
    bad_subject_requests_are_refused_and_write_nothing,
    subject_access_returns_every_event_of_the_subject_in_order,
    after_erasure_the_same_identifier_starts_a_fresh_unlinked_subject,
    appends_racing_an_erasure_are_either_erased_or_under_a_fresh_handle_and_never_lost,
    kek_rotation_rewraps_every_key_resumably_and_the_old_kek_can_be_deleted,
);
