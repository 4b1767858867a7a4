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
