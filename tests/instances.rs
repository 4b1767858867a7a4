//! Several service instances on one PostgreSQL database: one linear chain, whatever happens to
//! one of them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::cast_possible_truncation, reason = "test code")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, Env};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn two_instances_on_one_database_keep_one_chain_even_when_one_is_killed() {
    let env = Env::new(Backend::Postgres).await;
    let a = Arc::new(env.serve(&["--checkpoint-every", "50"]).await);
    // The second instance shares the keys (as instances behind one load balancer do).
    let second_dir = common::workdir();
    common::copy_keys(&env.path().join("keys"), &second_dir.path().join("keys"));
    let b = Arc::new(
        env.serve_in(second_dir.path(), &["--checkpoint-every", "50"])
            .await,
    );

    // A's load ends when A is killed; B's goes on after that.
    let load_a = tokio::spawn(common::load(
        Arc::clone(&a),
        "a",
        8,
        Duration::from_secs(30),
    ));
    let load_b = tokio::spawn(common::load(Arc::clone(&b), "b", 8, Duration::from_secs(5)));
    // Kill instance A mid-load, once both have made progress.
    a.wait_for_stream("a-0", 16).await;
    b.wait_for_stream("b-0", 16).await;
    let pid = a.child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let acked_a = load_a.await.unwrap();
    let acked_b = load_b.await.unwrap();
    assert!(
        acked_a.len() > 50 && acked_b.len() > 50,
        "both instances took load: {} and {}",
        acked_a.len(),
        acked_b.len()
    );

    let events = b.all_events().await;
    // One linear chain: dense seqs, each linked to the one before, no duplicate.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64, "gap or duplicate at {i}");
        if i > 0 {
            assert_eq!(e["prev_hash"], events[i - 1]["entry_hash"], "fork at {i}");
        }
    }
    // Every acknowledged event, from either instance, is there unchanged.
    for (seq, hash) in acked_a.iter().chain(&acked_b) {
        assert_eq!(
            &events[*seq as usize]["entry_hash"], hash,
            "acknowledged seq {seq} changed or missing"
        );
    }
    // Both instances' commits interleave in the one chain.
    let tags: std::collections::HashSet<&str> = events
        .iter()
        .filter_map(|e| e["data"]["tag"].as_str())
        .collect();
    assert!(tags.contains("a") && tags.contains("b"));
    // The shared stream's versions stayed dense across instances.
    let versions: Vec<u64> = events
        .iter()
        .filter(|e| e["stream_id"] == "shared")
        .map(|e| e["stream_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (0..versions.len() as u64).collect::<Vec<_>>());

    // The whole ledger verifies, checkpoints included, from the surviving instance and offline.
    let (status, _, report) = b.get("/v1/audit/verify").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["entries_checked"], events.len() as u64);
    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    // A restarted instance continues the same chain.
    let a = env.serve(&[]).await;
    let (status, body) = a
        .append("after", &common::one_event("AfterKill", json!({"n": 1})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(body["first_seq"].as_u64().unwrap() >= events.len() as u64);
    a.terminate().await;
    Arc::try_unwrap(b).ok().unwrap().terminate().await;
}

#[tokio::test]
async fn an_erasure_on_one_instance_is_respected_by_the_other() {
    let env = Env::new(Backend::Postgres).await;
    let a = env.serve(&[]).await;
    let second_dir = common::workdir();
    common::copy_keys(&env.path().join("keys"), &second_dir.path().join("keys"));
    let b = env.serve_in(second_dir.path(), &[]).await;
    a.append(
        "c",
        &json!({"events": [{"type": "T", "subject": "gina", "data": {"secret": 1}}]}),
    )
    .await;
    // B reads (and caches) Gina's key...
    assert_eq!(b.all_events().await[0]["data"]["secret"], 1);
    // ...A erases her...
    let (status, _) = a
        .post_raw(
            "/v1/subjects/erase",
            json!({"subject": "gina", "reason": "r", "request_ref": "x"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // ...and B no longer returns her data, and starts a fresh subject for her identifier.
    let events = b.all_events().await;
    assert_eq!(events[0]["erased"], true);
    assert_eq!(events[0]["data"], Value::Null);
    b.append(
        "c",
        &json!({"events": [{"type": "T", "subject": "gina", "data": {"secret": 2}}]}),
    )
    .await;
    let events = a.all_events().await;
    assert_ne!(events[2]["subject"], events[0]["subject"]);
    a.terminate().await;
    b.terminate().await;
}

#[tokio::test]
async fn tampering_with_the_postgres_tables_is_found_and_located() {
    let env = Env::new(Backend::Postgres).await;
    let s = env.serve(&["--checkpoint-every", "4"]).await;
    for i in 0..10 {
        s.append("t", &common::one_event("E", json!({"i": i})))
            .await;
    }
    s.append(
        "t",
        &json!({"events": [{"type": "T", "subject": "hugo", "data": {"n": 1}}]}),
    )
    .await;
    s.post_raw(
        "/v1/subjects/erase",
        json!({"subject": "hugo", "reason": "r", "request_ref": "x"}).to_string(),
    )
    .await;
    s.terminate().await;
    assert_eq!(env.cli(&["verify"]).0, 0);
    let says = |seq: u64, kind: &str| {
        let (code, out, err) = env.cli(&["verify"]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            out.contains(&format!("FAILED at seq {seq}: {kind}")),
            "expected seq {seq} {kind}: {out}"
        );
    };
    env.sql(&[
        "DROP TRIGGER entries_no_update ON entries",
        "DROP TRIGGER entries_no_delete ON entries",
    ])
    .await;
    env.sql(&["UPDATE entries SET event_type = 'Forged' WHERE seq = 3"])
        .await;
    says(3, "entry_hash_mismatch");
    env.sql(&["UPDATE entries SET event_type = 'E' WHERE seq = 3"])
        .await;
    assert_eq!(env.cli(&["verify"]).0, 0);
    // A destroyed key put back (as from an old backup): named at the erasure entry.
    env.sql(&["INSERT INTO data_keys SELECT '\\x01'::bytea || handle, '\\x00'::bytea, 'old', 0 FROM erased_subjects"]).await;
    says(11, "restored_erased_key");
    env.sql(&["DELETE FROM data_keys WHERE kek_id = 'old'"])
        .await;
    // One byte of a payload.
    env.sql(&["UPDATE entries SET payload = set_byte(payload, 40, get_byte(payload, 40) # 255) WHERE seq = 5"]).await;
    says(5, "payload_digest_mismatch");
    // A deleted row, in a second ledger.
    let env2 = Env::new(Backend::Postgres).await;
    let s = env2.serve(&[]).await;
    for i in 0..6 {
        s.append("t", &common::one_event("E", json!({"i": i})))
            .await;
    }
    s.terminate().await;
    env2.sql(&[
        "DROP TRIGGER entries_no_delete ON entries",
        "DELETE FROM entries WHERE seq = 2",
    ])
    .await;
    let (code, out, _) = env2.cli(&["verify"]);
    assert_eq!(code, 1);
    assert!(out.contains("FAILED at seq 2: seq_mismatch"), "{out}");
}

#[tokio::test]
async fn an_instance_whose_connections_are_cut_mid_load_loses_no_acknowledged_event() {
    let env = Env::new(Backend::Postgres).await;
    let s = Arc::new(env.serve(&[]).await);
    let loader = tokio::spawn(common::load(
        Arc::clone(&s),
        "cut",
        8,
        Duration::from_secs(3),
    ));
    let db = env.pg.as_ref().unwrap().name.clone();
    // Cut every connection the service holds, three times, while it commits batches.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        env.sql(&[&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{db}' AND application_name = 'auditledger' AND pid <> pg_backend_pid()"
        )])
        .await;
    }
    let acked = loader.await.unwrap();
    assert!(!acked.is_empty());
    // The service recovers by itself (its pool reconnects)...
    common::wait_until(
        "the service to recover after its connections were cut",
        Duration::from_secs(10),
        async || {
            s.append("after-cut", &common::one_event("After", json!({"n": 1})))
                .await
                .0
                == StatusCode::CREATED
        },
    )
    .await;
    // ...and every acknowledged event is in the one chain, which verifies.
    let events = s.all_events().await;
    for (seq, hash) in &acked {
        assert_eq!(
            &events[*seq as usize]["entry_hash"], hash,
            "acknowledged seq {seq} lost"
        );
    }
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64);
    }
    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    // The running-server lock went with the cut connections; the service takes it again, so
    // a KEK rotation still refuses to run beside it. Wait until PostgreSQL shows it held.
    let held = "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                AND classid = x'61756469'::int AND objid = x'746b656b'::int AND objsubid = 1 \
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    common::wait_until(
        "the server to take its lock again",
        Duration::from_secs(30),
        async || env.sql_count(held).await > 0,
    )
    .await;
    // rotate-kek asks the running server, which rotates in the background and answers.
    let (code, out, err) = env.cli(&["rotate-kek", "--timeout-secs", "60"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("running service"), "{out}");
    Arc::try_unwrap(s).ok().unwrap().terminate().await;
}

/// One acknowledged keyed append: its key, stream, body and the answer.
struct Acked {
    key: String,
    stream: String,
    body: Value,
    answer: Value,
}

/// Appends from `writers` tasks to `s` until `deadline`, each request with an idempotency key
/// and a subject shared with the other instance, `pause` between a task's requests; returns
/// every acknowledged append. Any answer but 201 fails the test.
async fn keyed_load(
    s: Arc<common::Server>,
    tag: &'static str,
    writers: usize,
    deadline: Duration,
    pause: Duration,
) -> Vec<Acked> {
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while started.elapsed() < deadline {
                let stream = if i.is_multiple_of(2) {
                    "shared".to_owned()
                } else {
                    format!("{tag}-{w}")
                };
                let key = format!("{tag}-{w}-{i}");
                let body = json!({"events": [
                    {"type": "Load", "subject": format!("person-{}", i % 5), "data": {"id": key}},
                    {"type": "Load", "data": {"id": key, "second": true}},
                ]});
                let r = s
                    .client
                    .post(s.url(&format!("/v1/streams/{stream}/events")))
                    .header("content-type", "application/json")
                    .header("idempotency-key", &key)
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                let answer: Value = r.json().await.unwrap();
                assert_eq!(status, StatusCode::CREATED, "{key}: {answer}");
                acked.push(Acked {
                    key,
                    stream,
                    body,
                    answer,
                });
                i += 1;
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            acked
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.extend(t.await.unwrap());
    }
    out
}

/// How many batches prepared ahead went stale on `s` (0 if none ever did).
async fn stale_batches(s: &common::Server) -> u64 {
    common::metric(&s.metrics().await, "auditledger_stale_batches_total").unwrap_or(0)
}

#[tokio::test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, checked from every side"
)]
async fn batches_prepared_ahead_that_another_instance_overtook_are_prepared_again() {
    let env = Env::new(Backend::Postgres).await;
    let a = Arc::new(env.serve(&["--checkpoint-every", "64"]).await);
    let second_dir = common::workdir();
    common::copy_keys(&env.path().join("keys"), &second_dir.path().join("keys"));
    let b = Arc::new(
        env.serve_in(second_dir.path(), &["--checkpoint-every", "64"])
            .await,
    );
    // A under continuous load prepares its batches ahead; B's occasional appends to the same
    // stream and subjects land between two of A's batches and make the one prepared ahead stale.
    let load_a = tokio::spawn(keyed_load(
        Arc::clone(&a),
        "a",
        8,
        Duration::from_secs(8),
        Duration::ZERO,
    ));
    let load_b = tokio::spawn(keyed_load(
        Arc::clone(&b),
        "b",
        1,
        Duration::from_secs(8),
        Duration::from_millis(300),
    ));
    let acked_a = load_a.await.unwrap();
    let acked_b = load_b.await.unwrap();
    let stale = stale_batches(&a).await + stale_batches(&b).await;
    assert!(stale > 0, "no batch prepared ahead went stale");

    let events = a.all_events().await;
    // One linear chain.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64, "gap or duplicate at {i}");
        if i > 0 {
            assert_eq!(e["prev_hash"], events[i - 1]["entry_hash"], "fork at {i}");
        }
    }
    // Every stream's versions are dense.
    let mut versions: std::collections::HashMap<String, Vec<u64>> =
        std::collections::HashMap::default();
    for e in &events {
        versions
            .entry(e["stream_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e["stream_version"].as_u64().unwrap());
    }
    for (stream, v) in &versions {
        assert_eq!(v, &(0..v.len() as u64).collect::<Vec<_>>(), "{stream}");
    }
    // Every acknowledged append is there exactly once, as acknowledged.
    let mut written: std::collections::HashMap<&str, u64> = std::collections::HashMap::default();
    for e in &events {
        if let Some(id) = e["data"]["id"].as_str() {
            *written.entry(id).or_default() += 1;
        }
    }
    for acked in acked_a.iter().chain(&acked_b) {
        assert_eq!(written.get(acked.key.as_str()), Some(&2), "{}", acked.key);
        for entry in acked.answer["entries"].as_array().unwrap() {
            let seq = entry["seq"].as_u64().unwrap() as usize;
            assert_eq!(
                events[seq]["entry_hash"], entry["entry_hash"],
                "{}",
                acked.key
            );
            assert_eq!(events[seq]["data"]["id"], acked.key.as_str());
            assert_eq!(events[seq]["stream_id"], acked.stream.as_str());
        }
    }
    assert_eq!(
        written.len(),
        acked_a.len() + acked_b.len(),
        "only acknowledged appends were written"
    );
    // Each identifier is one subject, whichever instance first wrote it.
    let mut subjects: std::collections::HashMap<String, &Value> =
        std::collections::HashMap::default();
    for (acked, e) in acked_a.iter().chain(&acked_b).map(|acked| {
        let seq = acked.answer["first_seq"].as_u64().unwrap() as usize;
        (acked, &events[seq])
    }) {
        let person = acked.body["events"][0]["subject"]
            .as_str()
            .unwrap()
            .to_owned();
        let handle = subjects.entry(person).or_insert(&e["subject"]);
        assert_eq!(*handle, &e["subject"], "{}", acked.key);
    }
    // A retry on either instance gets the original answer.
    for (i, acked) in acked_a.iter().chain(&acked_b).enumerate().step_by(7) {
        let s = if i % 2 == 0 { &a } else { &b };
        let r = s
            .client
            .post(s.url(&format!("/v1/streams/{}/events", acked.stream)))
            .header("content-type", "application/json")
            .header("idempotency-key", &acked.key)
            .body(acked.body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()["idempotency-replayed"], "true");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["entries"], acked.answer["entries"], "{}", acked.key);
    }
    let (status, _, report) = b.get("/v1/audit/verify").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(report["ok"], true, "{report}");
    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    Arc::try_unwrap(a).ok().unwrap().terminate().await;
    Arc::try_unwrap(b).ok().unwrap().terminate().await;
}

#[tokio::test]
async fn appends_on_one_instance_never_land_under_a_key_the_other_instance_erased() {
    let env = Env::new(Backend::Postgres).await;
    let a = Arc::new(env.serve(&[]).await);
    let second_dir = common::workdir();
    common::copy_keys(&env.path().join("keys"), &second_dir.path().join("keys"));
    let b = env.serve_in(second_dir.path(), &[]).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A keeps the writer busy with one subject, so that its batches are prepared ahead on top
    // of the one in flight, carrying the subject's handle and key.
    let mut writers = Vec::new();
    for w in 0..8 {
        let (a, stop) = (Arc::clone(&a), Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (status, body) = a
                    .append(
                        &format!("acct-{w}"),
                        &json!({"events": [{"type": "T", "subject": "carol", "data": {"w": w, "n": n}}]}),
                    )
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                acked.push((body["first_seq"].as_u64().unwrap(), body["entries"][0]["entry_hash"].clone()));
                n += 1;
            }
            acked
        }));
    }
    // B erases her again and again while A appends.
    let mut receipts = Vec::new();
    for round in 0..5 {
        a.wait_for_stream("acct-0", 10 * (round + 1)).await;
        let (status, receipt) = b
            .post_raw(
                "/v1/subjects/erase",
                json!({"subject": "carol", "reason": "r", "request_ref": format!("x{round}")})
                    .to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{receipt}");
        receipts.push(receipt);
    }
    a.wait_for_stream("acct-0", 60).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    // A's batches prepared ahead with her old handle were found stale and prepared again.
    assert!(stale_batches(&a).await > 0);
    let events = a.all_entries().await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64);
    }
    for (seq, hash) in &acked {
        assert_eq!(
            &events[*seq as usize]["entry_hash"], hash,
            "acknowledged {seq}"
        );
    }
    let erased: std::collections::HashMap<&str, u64> = receipts
        .iter()
        .map(|r| {
            (
                r["subject_handle"].as_str().unwrap(),
                r["erasure_seq"].as_u64().unwrap(),
            )
        })
        .collect();
    for e in events.iter().filter(|e| e["type"] == "T") {
        let seq = e["seq"].as_u64().unwrap();
        if let Some(at) = erased.get(e["subject"].as_str().unwrap()) {
            assert!(seq < *at, "seq {seq} landed under a key erased at {at}");
            assert_eq!(e["erased"], true, "seq {seq}");
        } else {
            assert_eq!(e["erased"], false, "seq {seq}");
            assert!(e["data"]["n"].is_number(), "seq {seq}");
        }
    }
    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    Arc::try_unwrap(a).ok().unwrap().terminate().await;
    b.terminate().await;
}
