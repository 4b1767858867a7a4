//! Verification without trusting the operator: checkpoints, proofs, witnesses, the audit
//! endpoint, export bundles and the offline verifier, and the tamper suite they catch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::needless_pass_by_value,
    clippy::too_many_lines,
    clippy::many_single_char_names,
    reason = "test code"
)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditledger::checkpoint::CheckpointJson;
use auditledger::crypto::PublicKey;
use auditledger::entry::EntryHash;
use auditledger::merkle::{self, MerkleHash};
use auditledger::report::SignedReport;
use common::{Backend, Env, Server, metric, one_event, raw_db, run_cli, wait_until, workdir};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn mh(v: &Value) -> MerkleHash {
    MerkleHash::from_hex(v.as_str().unwrap()).unwrap()
}

fn hashes(v: &Value) -> Vec<MerkleHash> {
    v.as_array().unwrap().iter().map(mh).collect()
}

async fn public_key(s: &Server) -> PublicKey {
    let (_, _, keys) = s.get("/v1/keys").await;
    PublicKey::from_bytes(&hex::decode(keys["keys"][0]["public_key"].as_str().unwrap()).unwrap())
        .unwrap()
}

async fn fill(s: &Server, n: usize) {
    for i in 0..n {
        let (status, _) = s
            .append(&format!("s-{}", i % 4), &one_event("E", json!({"i": i})))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
}

fn checkpoint(v: &Value) -> auditledger::checkpoint::Checkpoint {
    serde_json::from_value::<CheckpointJson>(v.clone())
        .unwrap()
        .parse()
        .unwrap()
}

async fn checkpoints_are_signed_every_n_entries_and_on_demand_and_proofs_check_against_them(
    b: Backend,
) {
    let env = Env::new(b).await;
    let s = env.serve(&["--checkpoint-every", "10"]).await;
    let (status, _, _) = s.get("/v1/checkpoints/latest").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        s.post_raw("/v1/checkpoints", "").await.0,
        StatusCode::NOT_FOUND
    );
    fill(&s, 35).await;
    let key = public_key(&s).await;
    let (_, _, page) = s.get("/v1/checkpoints").await;
    let sizes: Vec<u64> = page["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["tree_size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, vec![10, 20, 30]);
    let (status, made) = s.post_raw("/v1/checkpoints", "").await;
    assert_eq!(status, StatusCode::OK, "{made}");
    assert_eq!(made["tree_size"], 35);
    assert_eq!(s.get("/v1/checkpoints/latest").await.2, made);
    // Asking again without growth returns the same checkpoint.
    assert_eq!(s.post_raw("/v1/checkpoints", "").await.1, made);

    let events = s.all_events().await;
    for cp_json in page["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&made])
    {
        let cp = checkpoint(cp_json);
        cp.verify(&key).unwrap();
        let size = cp.tree_size;
        assert_eq!(
            cp.last_entry_hash.to_hex(),
            events[size as usize - 1]["entry_hash"].as_str().unwrap()
        );
        for seq in [0, size / 2, size - 1] {
            let (status, _, p) = s
                .get(&format!("/v1/proofs/inclusion?seq={seq}&tree_size={size}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{p}");
            assert_eq!(mh(&p["root_hash"]), cp.root_hash);
            let leaf = merkle::leaf_hash(
                &EntryHash::from_hex(events[seq as usize]["entry_hash"].as_str().unwrap())
                    .unwrap()
                    .0,
            );
            assert_eq!(mh(&p["leaf_hash"]), leaf);
            merkle::verify_inclusion(seq, size, &leaf, &hashes(&p["proof"]), &cp.root_hash)
                .unwrap();
        }
    }
    let (_, _, c) = s
        .get("/v1/proofs/consistency?from_size=10&to_size=35")
        .await;
    let old = checkpoint(&page["checkpoints"][0]);
    merkle::verify_consistency(
        10,
        35,
        &old.root_hash,
        &checkpoint(&made).root_hash,
        &hashes(&c["proof"]),
    )
    .unwrap();

    for (q, status) in [
        ("/v1/proofs/inclusion?seq=35", StatusCode::NOT_FOUND),
        (
            "/v1/proofs/inclusion?seq=5&tree_size=5",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/proofs/inclusion?seq=1&tree_size=99",
            StatusCode::NOT_FOUND,
        ),
        ("/v1/proofs/inclusion?seq=x", StatusCode::BAD_REQUEST),
        ("/v1/proofs/inclusion", StatusCode::BAD_REQUEST),
        (
            "/v1/proofs/consistency?from_size=0&to_size=5",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/proofs/consistency?from_size=9&to_size=5",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/proofs/consistency?from_size=5&to_size=36",
            StatusCode::NOT_FOUND,
        ),
        ("/v1/checkpoints?limit=0", StatusCode::BAD_REQUEST),
    ] {
        let (got, ct, body) = s.get(q).await;
        assert_eq!(got, status, "{q}: {body}");
        assert_eq!(ct, "application/problem+json", "{q}");
    }
    s.terminate().await;
}

async fn witnesses_receive_every_checkpoint_with_a_consistency_proof(b: Backend) {
    // A webhook witness: a real HTTP server on loopback that keeps what it is sent.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sink = Arc::clone(&sink);
            async move {
                sink.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let env = Env::new(b).await;
    let witness = env.path().join("witness");
    let s = env
        .serve(&[
            "--checkpoint-every",
            "5",
            "--witness-dir",
            witness.to_str().unwrap(),
            "--witness-webhook",
            &hook,
        ])
        .await;
    fill(&s, 17).await;
    s.post_raw("/v1/checkpoints", "").await;
    let key = public_key(&s).await;
    // Publication is asynchronous; wait for the last one.
    wait_until(
        "the publication of checkpoint 17",
        Duration::from_secs(5),
        async || {
            received
                .lock()
                .unwrap()
                .iter()
                .any(|p| p["checkpoint"]["tree_size"] == 17)
        },
    )
    .await;
    let pubs = received.lock().unwrap().clone();
    let sizes: Vec<u64> = pubs
        .iter()
        .map(|p| p["checkpoint"]["tree_size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, vec![5, 10, 15, 17]);
    assert_eq!(pubs[0]["previous"], Value::Null);
    for p in &pubs[1..] {
        let new = checkpoint(&p["checkpoint"]);
        let prev = checkpoint(&p["previous"]);
        new.verify(&key).unwrap();
        merkle::verify_consistency(
            prev.tree_size,
            new.tree_size,
            &prev.root_hash,
            &new.root_hash,
            &hashes(&p["consistency_proof"]),
        )
        .unwrap();
    }
    for size in [5, 10, 15, 17] {
        assert!(witness.join(format!("checkpoint-{size:020}.json")).exists());
    }
    let latest: Value =
        serde_json::from_str(&std::fs::read_to_string(witness.join("latest.json")).unwrap())
            .unwrap();
    assert_eq!(latest, pubs[3]);
    s.terminate().await;
}

#[tokio::test]
async fn a_server_refuses_a_database_older_than_its_published_checkpoint() {
    let dir = workdir();
    let witness = dir.path().join("witness");
    let flags = ["--witness-dir", witness.to_str().unwrap()];
    let s = Server::start(dir.path(), &flags).await;
    fill(&s, 5).await;
    s.post_raw("/v1/checkpoints", "").await;
    s.terminate().await;
    let old = std::fs::read(dir.path().join("data/ledger.db")).unwrap();
    let s = Server::start(dir.path(), &flags).await;
    fill(&s, 5).await;
    s.post_raw("/v1/checkpoints", "").await;
    // Publication is asynchronous; wait until the witness holds the newer checkpoint.
    let latest = witness.join("latest.json");
    wait_until(
        "the publication of checkpoint 10",
        Duration::from_secs(10),
        async || {
            let published: Value = std::fs::read_to_string(&latest)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            published["checkpoint"]["tree_size"] == 10
        },
    )
    .await;
    s.terminate().await;
    std::fs::write(dir.path().join("data/ledger.db"), old).unwrap();
    let (code, _, err) = run_cli(
        dir.path(),
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--witness-dir",
            witness.to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("truncated or restored from an older copy"),
        "{err}"
    );
}

async fn an_erasure_receipt_carries_a_checkpoint_that_proves_the_erasure_entry(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&[]).await;
    fill(&s, 6).await;
    s.append(
        "c",
        &json!({"events": [{"type": "T", "subject": "dora", "data": {"n": 1}}]}),
    )
    .await;
    let (status, r) = s
        .post_raw(
            "/v1/subjects/erase",
            json!({"subject": "dora", "reason": "Art. 17", "request_ref": "DSR-7"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    let cp = checkpoint(&r["checkpoint"]);
    cp.verify(&public_key(&s).await).unwrap();
    let seq = r["erasure_seq"].as_u64().unwrap();
    assert_eq!(cp.tree_size, seq + 1);
    let leaf = merkle::leaf_hash(
        &EntryHash::from_hex(r["erasure_entry_hash"].as_str().unwrap())
            .unwrap()
            .0,
    );
    merkle::verify_inclusion(
        seq,
        cp.tree_size,
        &leaf,
        &hashes(&r["inclusion_proof"]),
        &cp.root_hash,
    )
    .unwrap();
    s.terminate().await;
}

async fn audit(s: &Server, query: &str) -> SignedReport {
    let (status, _, body) = s.get(&format!("/v1/audit/verify{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_value(body).unwrap()
}

async fn the_audit_endpoint_signs_its_report_and_runs_large_ranges_as_jobs(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&["--checkpoint-every", "7"]).await;
    fill(&s, 30).await;
    let key = public_key(&s).await;
    let report = audit(&s, "").await;
    assert!(report.ok);
    assert_eq!(
        (
            report.from_seq,
            report.to_seq,
            report.entries_checked,
            report.checkpoints_checked
        ),
        (0, Some(29), 30, 4)
    );
    report.verify(&key).unwrap();
    let mut forged = report.clone();
    forged.entries_checked = 31;
    assert!(forged.verify(&key).is_err());
    let part = audit(&s, "?from_seq=10&to_seq=19").await;
    assert_eq!((part.entries_checked, part.checkpoints_checked), (10, 1));
    assert!(part.ok);

    let (status, _, job) = s.get("/v1/audit/verify?async=true").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let poll = job["poll"].as_str().unwrap().to_owned();
    let mut done = Value::Null;
    for _ in 0..100 {
        let (_, _, j) = s.get(&poll).await;
        if j["status"] == "done" {
            done = j;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["entries_checked"], 30);
    let from_job: SignedReport = serde_json::from_value(done["report"].clone()).unwrap();
    assert!(from_job.ok);
    from_job.verify(&key).unwrap();
    assert_eq!(
        s.get("/v1/audit/verify/jobs/nope").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.get("/v1/audit/verify?from_seq=5&to_seq=2").await.0,
        StatusCode::BAD_REQUEST
    );
    s.terminate().await;

    // Tamper with one payload: the report says where and what, and is still signed.
    match b {
        Backend::Sqlite => tamper(env.path(), &["UPDATE entries SET payload = substr(payload, 1, 40) || CASE WHEN substr(payload, 41, 1) = x'00' THEN x'01' ELSE x'00' END || substr(payload, 42) WHERE seq = 12"]).await,
        Backend::Postgres => env.sql(&[
            "DROP TRIGGER entries_no_update ON entries",
            "UPDATE entries SET payload = set_byte(payload, 40, get_byte(payload, 40) # 255) WHERE seq = 12",
        ]).await,
    }
    let s = env.serve(&[]).await;
    let report = audit(&s, "").await;
    assert!(!report.ok);
    let f = report.first_failure.clone().unwrap();
    assert_eq!((f.seq, f.kind.as_str()), (12, "payload_digest_mismatch"));
    report.verify(&key).unwrap();
    s.terminate().await;
}

async fn tamper(dir: &Path, sql: &[&str]) {
    let db = raw_db(dir).await;
    for t in [
        "entries_no_update",
        "entries_no_delete",
        "checkpoints_no_delete",
    ] {
        sqlx::query(&format!("DROP TRIGGER IF EXISTS {t}"))
            .execute(&db)
            .await
            .unwrap();
    }
    for s in sql {
        sqlx::query(s).execute(&db).await.unwrap();
    }
    db.close().await;
}

fn export(dir: &Path, name: &str) -> std::path::PathBuf {
    let out = dir.join(name);
    let (code, o, e) = run_cli(dir, &["export", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{o}{e}");
    out
}

fn verify_bundle(dir: &Path, bundle: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["verify-bundle", bundle.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, out, err) = run_cli(dir, &args);
    (code, format!("{out}{err}"))
}

async fn export_bundles_verify_offline_and_the_api_and_cli_exports_agree(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&["--checkpoint-every", "8"]).await;
    fill(&s, 20).await;
    s.append("p", &json!({"events": [{"type": "T", "subject": "erin", "data": {"secret": "ERIN-PLAINTEXT"}}]})).await;
    let r = s.client.get(s.url("/v1/export")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let api_bundle = r.text().await.unwrap();
    s.post_raw("/v1/checkpoints", "").await;
    let (_, _, trusted) = s.get("/v1/checkpoints/latest").await;
    std::fs::write(env.path().join("trusted.json"), trusted.to_string()).unwrap();
    s.terminate().await;
    assert!(
        !api_bundle.contains("ERIN-PLAINTEXT"),
        "a bundle never holds decrypted data"
    );
    let file = env.path().join("bundle.ndjson");
    let (code, o, e) = env.cli(&["export", "--out", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{o}{e}");
    let cli_bundle = std::fs::read_to_string(&file).unwrap();
    let strip = |b: &str| {
        b.lines()
            .filter(|l| {
                !l.contains("\"kind\":\"header\"")
                    && !l.contains("\"kind\":\"checkpoint\"")
                    && !l.contains("\"kind\":\"footer\"")
            })
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&api_bundle), strip(&cli_bundle));
    for line in cli_bundle.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["kind"] == "entry" {
            assert!(
                v["seq"].is_u64()
                    && v["entry_hash"].is_string()
                    && v["type"].is_string()
                    && v["payload"].is_string()
            );
        }
    }

    let public = env.path().join("keys/signing.pub");
    let (code, out) = verify_bundle(env.path(), &file, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("public keys inside the bundle"), "{out}");
    let (code, out) = verify_bundle(
        env.path(),
        &file,
        &[
            "--public-key",
            public.to_str().unwrap(),
            "--trusted-checkpoint",
            env.path().join("trusted.json").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("21 entries")
            && out.contains("extends the trusted checkpoint of tree size 21"),
        "{out}"
    );

    // A different key: every signature is untrusted.
    let other = workdir();
    run_cli(other.path(), &["keygen", "--keys-dir", "k"]);
    let (code, out) = verify_bundle(
        env.path(),
        &file,
        &[
            "--public-key",
            other.path().join("k/signing.pub").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED at seq 0: unknown_key"), "{out}");

    // One byte of one entry changed in the file: named by seq and kind.
    let mut lines: Vec<String> = cli_bundle.lines().map(str::to_owned).collect();
    let idx = lines
        .iter()
        .position(|l| l.contains("\"seq\":13,"))
        .unwrap();
    let mut v: Value = serde_json::from_str(&lines[idx]).unwrap();
    v["stream_version"] = json!(999);
    lines[idx] = canonical(&v);
    let bent = env.path().join("bent.ndjson");
    std::fs::write(&bent, lines.join("\n") + "\n").unwrap();
    let (code, out) = verify_bundle(env.path(), &bent, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED at seq 13: entry_hash_mismatch"),
        "{out}"
    );
    // A signature copied from the next entry.
    let mut lines: Vec<String> = cli_bundle.lines().map(str::to_owned).collect();
    let (a, b) = (
        lines.iter().position(|l| l.contains("\"seq\":4,")).unwrap(),
        lines.iter().position(|l| l.contains("\"seq\":5,")).unwrap(),
    );
    let mut va: Value = serde_json::from_str(&lines[a]).unwrap();
    let vb: Value = serde_json::from_str(&lines[b]).unwrap();
    va["signature"] = vb["signature"].clone();
    lines[a] = canonical(&va);
    std::fs::write(&bent, lines.join("\n") + "\n").unwrap();
    let (code, out) = verify_bundle(env.path(), &bent, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED at seq 4: bad_signature"), "{out}");
    // Cut off in transit: no footer.
    let cut: Vec<&str> = cli_bundle.lines().take(10).collect();
    std::fs::write(&bent, cut.join("\n") + "\n").unwrap();
    let (code, out) = verify_bundle(env.path(), &bent, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("incomplete"), "{out}");
    // Not a bundle at all.
    std::fs::write(&bent, "hello\n").unwrap();
    assert_eq!(verify_bundle(env.path(), &bent, &[]).0, 2);
    assert_eq!(
        verify_bundle(env.path(), &env.path().join("missing.ndjson"), &[]).0,
        2
    );
}

#[tokio::test]
async fn tamper_suite_each_attack_is_detected_and_located() {
    // A ledger with a checkpoint every 5 entries and one erased subject.
    let dir = workdir();
    let s = Server::start(dir.path(), &["--checkpoint-every", "5"]).await;
    fill(&s, 8).await;
    s.terminate().await;
    let older_copy = std::fs::read(dir.path().join("data/ledger.db")).unwrap();
    let s = Server::start(dir.path(), &["--checkpoint-every", "5"]).await;
    fill(&s, 4).await;
    s.append(
        "c",
        &json!({"events": [{"type": "T", "subject": "fred", "data": {"n": 1}}]}),
    )
    .await;
    let db = raw_db(dir.path()).await;
    let key_row: (Vec<u8>, Vec<u8>, String, i64) = sqlx::query_as("SELECT key_ref, wrapped, kek_id, created_at FROM data_keys WHERE substr(key_ref, 1, 1) = x'01'")
        .fetch_one(&db).await.unwrap();
    db.close().await;
    s.post_raw(
        "/v1/subjects/erase",
        json!({"subject": "fred", "reason": "r", "request_ref": "DSR"}).to_string(),
    )
    .await;
    fill(&s, 6).await; // 20 entries; checkpoints at 5, 10, 14 (erasure), 19
    s.post_raw("/v1/checkpoints", "").await;
    let (_, _, trusted) = s.get("/v1/checkpoints/latest").await;
    s.terminate().await;
    let trusted_file = dir.path().join("trusted.json");
    std::fs::write(&trusted_file, trusted.to_string()).unwrap();
    let pristine = std::fs::read(dir.path().join("data/ledger.db")).unwrap();
    assert_eq!(run_cli(dir.path(), &["verify"]).0, 0);

    let restore = || {
        // A WAL left beside the file would be replayed over the restored copy.
        for f in ["data/ledger.db-wal", "data/ledger.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        std::fs::write(dir.path().join("data/ledger.db"), &pristine).unwrap();
    };
    let verify_says = |seq: u64, kind: &str| {
        let (code, out, err) = run_cli(dir.path(), &["verify"]);
        assert_eq!(code, 1, "expected seq {seq} {kind}: {out}{err}");
        assert!(
            out.contains(&format!("FAILED at seq {seq}: {kind}")),
            "expected seq {seq} {kind}: {out}"
        );
    };
    let bundle_says = |seq: u64, kind: &str| {
        let file = export(dir.path(), "t.ndjson");
        let (code, out) = verify_bundle(
            dir.path(),
            &file,
            &[
                "--public-key",
                dir.path().join("keys/signing.pub").to_str().unwrap(),
                "--trusted-checkpoint",
                trusted_file.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!("FAILED at seq {seq}: {kind}")),
            "expected seq {seq} {kind}: {out}"
        );
    };

    // A forged row appended at the tail.
    tamper(dir.path(), &["INSERT INTO entries SELECT 20, stream_id, 99, event_type, schema_version, subject, recorded_at, metadata, payload, payload_digest, prev_hash, entry_hash, signature, key_id, ledger_id FROM entries WHERE seq = 3"]).await;
    verify_says(20, "broken_link");
    restore();

    // Two rows swapped.
    tamper(
        dir.path(),
        &[
            "CREATE TABLE tmp AS SELECT * FROM entries WHERE seq IN (6, 7)",
            "DELETE FROM entries WHERE seq IN (6, 7)",
            "UPDATE tmp SET seq = 13 - seq",
            "INSERT INTO entries SELECT * FROM tmp",
        ],
    )
    .await;
    verify_says(6, "broken_link");
    bundle_says(6, "broken_link");
    restore();

    // The tail cut off, checkpoints left alone: the stored checkpoint covers missing entries.
    tamper(dir.path(), &["DELETE FROM entries WHERE seq >= 17"]).await;
    verify_says(17, "truncated");
    restore();

    // The tail cut off and the checkpoints covering it removed too: only a kept checkpoint
    // shows it.
    tamper(
        dir.path(),
        &[
            "DELETE FROM entries WHERE seq >= 17",
            "DELETE FROM checkpoints WHERE tree_size > 17",
            "DELETE FROM merkle_nodes",
        ],
    )
    .await;
    assert_eq!(
        run_cli(dir.path(), &["verify"]).0,
        0,
        "without a kept checkpoint a clean cut is invisible"
    );
    bundle_says(17, "truncated");
    restore();

    // The whole database replaced by an older copy of itself (taken at 8 entries): it verifies
    // on its own, but not against the checkpoint the auditor kept.
    for f in ["data/ledger.db-wal", "data/ledger.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    std::fs::write(dir.path().join("data/ledger.db"), &older_copy).unwrap();
    assert_eq!(
        run_cli(dir.path(), &["verify"]).0,
        0,
        "an old copy is internally consistent"
    );
    bundle_says(8, "truncated");
    restore();

    // A checkpoint whose root was rewritten: caught against the entries.
    tamper(
        dir.path(),
        &[
            "DROP TRIGGER IF EXISTS checkpoints_no_update",
            "UPDATE checkpoints SET root_hash = zeroblob(32) WHERE tree_size = 10",
        ],
    )
    .await;
    verify_says(9, "bad_checkpoint_signature");
    restore();

    // The shredded key row restored from an old copy.
    let db = raw_db(dir.path()).await;
    sqlx::query("INSERT INTO data_keys (key_ref, wrapped, kek_id, created_at) VALUES (?, ?, ?, ?)")
        .bind(&key_row.0)
        .bind(&key_row.1)
        .bind(&key_row.2)
        .bind(key_row.3)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    verify_says(13, "restored_erased_key");
    restore();
    assert_eq!(run_cli(dir.path(), &["verify"]).0, 0);
}

on_both_backends!(
    checkpoints_are_signed_every_n_entries_and_on_demand_and_proofs_check_against_them,
    witnesses_receive_every_checkpoint_with_a_consistency_proof,
    an_erasure_receipt_carries_a_checkpoint_that_proves_the_erasure_entry,
    the_audit_endpoint_signs_its_report_and_runs_large_ranges_as_jobs,
    export_bundles_verify_offline_and_the_api_and_cli_exports_agree,
);

/// Makes a private CA and a certificate for 127.0.0.1 signed by it, with the openssl CLI.
fn private_ca(dir: &Path) {
    const NEW_P256_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    let run = |args: &str| {
        let out = std::process::Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&format!(
        "req -x509 {NEW_P256_KEY} -keyout ca.key -out ca.pem -days 2 -subj /CN=test-witness-CA"
    ));
    run(&format!(
        "req {NEW_P256_KEY} -keyout server.key -out server.csr -subj /CN=127.0.0.1"
    ));
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext",
    );
}

/// An HTTPS witness on loopback: answers every POST with 200 and keeps its JSON body.
async fn tls_witness(dir: &Path) -> (String, Arc<Mutex<Vec<Value>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hook", listener.local_addr().unwrap());
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, sink) = (acceptor.clone(), Arc::clone(&sink));
            tokio::spawn(async move {
                // A client that does not trust the CA aborts the handshake: nothing to keep.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = tls.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if request.len() < end + 4 + length {
                        continue;
                    }
                    sink.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&request[end + 4..end + 4 + length]).unwrap());
                    request.drain(..end + 4 + length);
                    tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                }
            });
        }
    });
    (url, received)
}

#[tokio::test]
async fn a_webhook_witness_behind_a_private_ca_is_reached_only_when_its_ca_is_configured() {
    let dir = workdir();
    private_ca(dir.path());
    let (hook, received) = tls_witness(dir.path()).await;
    let ca = dir.path().join("ca.pem");

    // Without the CA the certificate is not trusted: nothing is published, and it is counted.
    let s = Server::start(
        dir.path(),
        &["--checkpoint-every", "5", "--witness-webhook", &hook],
    )
    .await;
    fill(&s, 5).await;
    wait_until(
        "the untrusted witness certificate to fail the publication",
        Duration::from_secs(10),
        async || {
            let text = s.metrics().await;
            metric(&text, "auditledger_witness_failures_total").unwrap_or(0) > 0
        },
    )
    .await;
    assert!(received.lock().unwrap().is_empty());
    s.terminate().await;

    // With it, every checkpoint arrives over TLS.
    let s = Server::start(
        dir.path(),
        &[
            "--checkpoint-every",
            "5",
            "--witness-webhook",
            &hook,
            "--witness-webhook-ca",
            ca.to_str().unwrap(),
        ],
    )
    .await;
    fill(&s, 5).await;
    wait_until(
        "a publication over TLS",
        Duration::from_secs(10),
        async || !received.lock().unwrap().is_empty(),
    )
    .await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["checkpoint"]["tree_size"], 10);
    s.terminate().await;

    // A CA file that holds no certificate stops the start with a clear message.
    std::fs::write(dir.path().join("bad.pem"), "not a certificate").unwrap();
    let (code, _, err) = run_cli(
        dir.path(),
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--witness-webhook",
            &hook,
            "--witness-webhook-ca",
            "bad.pem",
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("bad.pem holds no PEM certificate"), "{err}");
}

/// A bundle line as the exporter writes it (fields in their fixed order): a tampered line must
/// still be canonical text, or the verifier refuses it as unusable before looking at it.
fn canonical(v: &Value) -> String {
    let line: auditledger::bundle::BundleLine = serde_json::from_value(v.clone()).unwrap();
    serde_json::to_string(&line).unwrap()
}
