//! Signing-key rotation: online and offline, on both backends, with several instances; the
//! ranges it gives keys; and a retired key that tries to write history after its range.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use auditledger::crypto::{KeyRef, LedgerSigningKey, seal};
use auditledger::entry::{Entry, EntryHash, EntryHeader, EventType, LedgerId, Seq, StreamId};
use common::{Backend, Env, one_event, wait_until};
use serde_json::{Value, json};

fn seed(path: &Path) -> [u8; 32] {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).unwrap();
    out
}

async fn export(s: &common::Server) -> String {
    let r = s.client.get(s.url("/v1/export")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

fn bundle_ok(env: &Env, file: &Path, args: &[&str]) -> (i32, String) {
    let mut all = vec!["verify-bundle", file.to_str().unwrap()];
    all.extend_from_slice(args);
    let (code, out, err) = env.cli(&all);
    (code, format!("{out}{err}"))
}

async fn a_rotation_while_serving_is_recorded_in_the_chain_and_verifies(backend: Backend) {
    let env = Env::new(backend).await;
    let s = env.serve(&["--checkpoint-every", "3"]).await;
    for i in 0..4 {
        s.append("acct", &one_event("E", json!({"i": i}))).await;
    }
    let old_seed = seed(&env.path().join("keys/signing.key"));
    let old_id = LedgerSigningKey::from_seed(&old_seed).key_id().to_hex();
    // An auditor keeps a checkpoint signed by the key that is about to retire.
    let (status, kept) = s.post_raw("/v1/checkpoints", "").await;
    assert_eq!(status, 200, "{kept}");
    let kept_file = env.path().join("kept.json");
    std::fs::write(&kept_file, kept.to_string()).unwrap();
    // The CLI runs beside the service; the service records the hand-over.
    let (code, out, err) = env.cli(&["rotate-signing-key", "--timeout-secs", "30"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rotated at seq 4"), "{out}");
    for i in 4..7 {
        let (status, body) = s.append("acct", &one_event("E", json!({"i": i}))).await;
        assert_eq!(status, 201, "{body}");
    }
    let events = s.all_events().await;
    assert_eq!(events[4]["stream_id"], "auditledger:signing-keys");
    assert_eq!(events[4]["type"], "SigningKeyRotated");
    assert_eq!(
        events[4]["key_id"], old_id,
        "the old key signs the hand-over"
    );
    let new_id = events[5]["key_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, old_id);
    assert_eq!(events[4]["metadata"]["new_key_id"], new_id);
    assert!(!env.path().join("keys/signing.next.key").exists());

    // Exact ranges: the old key signed 0..=4, the new one from 5 and is still current.
    let (_, _, keys) = s.get("/v1/keys").await;
    let keys = keys["keys"].as_array().unwrap().clone();
    let old = keys.iter().find(|k| k["key_id"] == old_id).unwrap();
    let new = keys
        .iter()
        .find(|k| k["key_id"] == new_id.as_str())
        .unwrap();
    assert_eq!(
        (old["first_seq"].clone(), old["last_seq"].clone()),
        (json!(0), json!(4))
    );
    assert_eq!(
        (new["first_seq"].clone(), new["last_seq"].clone()),
        (json!(5), Value::Null)
    );
    assert_eq!(new["active"], true);

    // The server trusts both keys, each in its range.
    let (status, _, report) = s.get("/v1/audit/verify").await;
    assert_eq!(status, 200);
    assert_eq!(report["ok"], true, "{report}");
    let checkpoint = s.get("/v1/checkpoints/latest").await.2;
    assert_eq!(checkpoint["key_id"], new_id.as_str());
    let body = export(&s).await;
    let bundle = env.path().join("bundle.ndjson");
    std::fs::write(&bundle, body).unwrap();
    // A bundle that ends before the rotation does not name it (nothing in it could confirm
    // it): the old key's line says it is current, and the bundle verifies with the key's file.
    let r = s
        .client
        .get(s.url("/v1/export?to_seq=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let prefix_text = r.text().await.unwrap();
    let old_line = prefix_text
        .lines()
        .find(|l| l.contains(&old_id))
        .unwrap()
        .to_owned();
    assert!(old_line.contains("\"last_seq\":null"), "{old_line}");
    let prefix = env.path().join("prefix.ndjson");
    std::fs::write(&prefix, &prefix_text).unwrap();
    s.terminate().await;
    let retired = env.path().join(format!("keys/retired/{old_id}.json"));
    let (code, out) = bundle_ok(&env, &prefix, &["--public-key", retired.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");

    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    // The current public key alone: the old key is anchored by the countersigned rotation.
    let current = env.path().join("keys/signing.pub");
    let (code, out) = bundle_ok(&env, &bundle, &["--public-key", current.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("trusted through a countersigned rotation"),
        "{out}"
    );
    // The retired key's file carries its range.
    let (code, out) = bundle_ok(
        &env,
        &bundle,
        &[
            "--public-key",
            retired.to_str().unwrap(),
            "--public-key",
            current.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    // A restart picks up the new key.
    let s = env.serve(&[]).await;
    let (status, body) = s.append("acct", &one_event("E", json!({"i": 7}))).await;
    assert_eq!(status, 201, "{body}");
    s.terminate().await;
}

async fn a_retired_key_cannot_write_history_after_its_range(backend: Backend) {
    let env = Env::new(backend).await;
    let s = env.serve(&[]).await;
    for i in 0..3 {
        s.append("acct", &one_event("E", json!({"i": i}))).await;
    }
    // The attacker keeps a copy of the key that is about to retire.
    let old = LedgerSigningKey::from_seed(&seed(&env.path().join("keys/signing.key")));
    s.terminate().await;
    let (code, out, err) = env.cli(&["rotate-signing-key"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rotated at seq 3"), "{out}");
    let s = env.serve(&[]).await;
    for i in 3..6 {
        s.append("acct", &one_event("E", json!({"i": i}))).await;
    }
    let body = export(&s).await;
    s.terminate().await;

    // Rewrite history from the rotation on, signing with the retired key: keep entries 0..=2,
    // then append forged entries that chain to them, as if no rotation had happened.
    let lines: Vec<&str> = body.lines().collect();
    let header: Value = serde_json::from_str(lines[0]).unwrap();
    let ledger = LedgerId::from_hex(header["ledger_id"].as_str().unwrap()).unwrap();
    let kept: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["kind"] == "entry" && v["seq"].as_u64().unwrap() < 3
        })
        .collect();
    let last_kept: Value = serde_json::from_str(kept[2]).unwrap();
    let prev = EntryHash::from_hex(last_kept["entry_hash"].as_str().unwrap()).unwrap();
    // The attacker makes the header agree with the forged history.
    let mut forged_header = header.clone();
    forged_header["to_seq"] = json!(5);
    forged_header["ledger_size"] = json!(6);
    let forged_header: auditledger::bundle::BundleLine =
        serde_json::from_value(forged_header).unwrap();
    let mut forged_lines = vec![serde_json::to_string(&forged_header).unwrap()];
    for l in &lines[1..] {
        let v: Value = serde_json::from_str(l).unwrap();
        if v["kind"] == "key" {
            forged_lines.push((*l).to_owned());
        }
    }
    for l in &kept {
        forged_lines.push((*l).to_owned());
    }
    forged_lines.extend(forged_entries(ledger, prev, &old, 3..6));
    forged_lines.push(r#"{"kind":"footer","entries":6,"checkpoints":0}"#.to_owned());
    let forged = env.path().join("forged.ndjson");
    std::fs::write(&forged, forged_lines.join("\n") + "\n").unwrap();

    // Against the current public key only: the retired key hands over to nothing trusted.
    let current = env.path().join("keys/signing.pub");
    let (code, out) = bundle_ok(&env, &forged, &["--public-key", current.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED at seq 0: unknown_key"), "{out}");
    // Against the keys with their ranges (as the keys directory records them): out of range.
    let retired = env
        .path()
        .join(format!("keys/retired/{}.json", old.key_id()));
    let (code, out) = bundle_ok(
        &env,
        &forged,
        &[
            "--public-key",
            retired.to_str().unwrap(),
            "--public-key",
            current.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED at seq 4: key_out_of_range"), "{out}");
}

/// PostgreSQL only: one SQLite database has one server (its data directory is locked).
#[tokio::test]
async fn two_instances_sharing_keys_both_switch_to_the_new_key() {
    let env = Env::new(Backend::Postgres).await;
    let a = env.serve(&[]).await;
    let b = env.serve(&[]).await;
    a.append("a", &one_event("E", json!({}))).await;
    b.append("b", &one_event("E", json!({}))).await;
    let (code, out, err) = env.cli(&["rotate-signing-key", "--timeout-secs", "30"]);
    assert_eq!(code, 0, "{out}{err}");
    // Both keep appending, and every entry after the hand-over is signed by the new key.
    for i in 0..5 {
        let (sa, ba) = a.append("a", &one_event("E", json!({"i": i}))).await;
        assert_eq!(sa, 201, "{ba}");
        let (sb, bb) = b.append("b", &one_event("E", json!({"i": i}))).await;
        assert_eq!(sb, 201, "{bb}");
    }
    wait_until(
        "both instances' appends are visible",
        std::time::Duration::from_secs(10),
        async || a.all_events().await.len() >= 13,
    )
    .await;
    let events = a.all_events().await;
    let rotation = events
        .iter()
        .position(|e| e["type"] == "SigningKeyRotated")
        .unwrap();
    let new_id = events[rotation + 1]["key_id"].clone();
    assert!(events[rotation + 1..].iter().all(|e| e["key_id"] == new_id));
    let (_, _, report) = b.get("/v1/audit/verify").await;
    assert_eq!(report["ok"], true, "{report}");
    a.terminate().await;
    b.terminate().await;
    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// Entries `seqs` of stream `acct` chained to `prev` and signed by `key`, as bundle lines.
fn forged_entries(
    ledger: LedgerId,
    mut prev: EntryHash,
    old: &LedgerSigningKey,
    seqs: std::ops::Range<u64>,
) -> Vec<String> {
    let mut forged_lines = Vec::new();
    let dek = auditledger::crypto::DataKey::generate();
    for seq in seqs {
        let header = EntryHeader {
            ledger_id: Some(ledger),
            seq: Seq(seq),
            stream_id: StreamId::parse("acct").unwrap(),
            stream_version: seq,
            event_type: EventType::parse("E").unwrap(),
            schema_version: 1,
            subject: None,
            recorded_at_micros: 4_000_000_000_000_000,
            metadata: auditledger::entry::Metadata::new(),
        };
        let payload = seal(&dek, &KeyRef::System([1; 16]), &header.payload_aad(), b"{}");
        let entry = Entry {
            header,
            payload_digest: payload.digest(),
            prev_hash: prev,
        };
        let hash = entry.hash();
        prev = hash;
        let record = auditledger::record::Record {
            entry,
            payload: Some(payload),
            entry_hash: hash,
            signature: old.sign_entry(&hash),
            key_id: old.key_id(),
        };
        let line = auditledger::bundle::BundleLine::Entry(
            auditledger::bundle::EntryLine::from_record(&record),
        );
        forged_lines.push(serde_json::to_string(&line).unwrap());
    }
    forged_lines
}

on_both_backends!(
    a_rotation_while_serving_is_recorded_in_the_chain_and_verifies,
    a_retired_key_cannot_write_history_after_its_range,
);
