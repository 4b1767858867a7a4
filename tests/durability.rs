//! Nothing acknowledged is ever lost: restarts, SIGTERM and SIGKILL under load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::needless_pass_by_value,
    clippy::too_many_lines,
    reason = "test code"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Backend, Env, Server, one_event};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn a_restart_keeps_everything_and_appends_continue_the_chain(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&[]).await;
    let (_, first) = s.append("a", &one_event("One", json!({"n": 1}))).await;
    let (_, second) = s.append("a", &one_event("Two", json!({"n": 2}))).await;
    let before = s.all_events().await;
    let (_, _, keys_before) = s.get("/v1/keys").await;
    assert!(s.terminate().await.success());

    let s = env.serve(&[]).await;
    assert_eq!(
        s.all_events().await,
        before,
        "a restart must keep every event as it was"
    );
    let (status, third) = s
        .append(
            "a",
            &json!({"expected_version": 1, "events": [{"type": "Three", "data": {"n": 3}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{third}");
    assert_eq!(third["first_seq"], 2);
    assert_eq!(third["stream_version"], 2);
    let all = s.all_events().await;
    assert_eq!(all[2]["prev_hash"], second["entries"][0]["entry_hash"]);
    assert_eq!(all[0]["entry_hash"], first["entries"][0]["entry_hash"]);
    assert_eq!(all[2]["data"], json!({"n": 3}));
    assert_eq!(
        s.get("/v1/keys").await.2["keys"][0]["key_id"],
        keys_before["keys"][0]["key_id"]
    );
    s.terminate().await;
    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("3 entries verified"), "{out}");
}

async fn assert_all_present(s: &Server, acked: &[(u64, Value)]) {
    let events = s.all_events().await;
    for (seq, hash) in acked {
        let e = events
            .get(*seq as usize)
            .unwrap_or_else(|| panic!("acknowledged seq {seq} is missing"));
        assert_eq!(&e["entry_hash"], hash, "acknowledged seq {seq} changed");
    }
}

async fn sigkill_during_a_write_load_loses_no_acknowledged_event(b: Backend) {
    let env = Env::new(b).await;
    let s = Arc::new(env.serve(&[]).await);
    let loader = tokio::spawn(common::load(
        Arc::clone(&s),
        "load",
        16,
        Duration::from_secs(20),
    ));
    // Let the load build up (each of the 16 writers puts every other request in its own
    // stream), then kill the process mid-write.
    s.wait_for_stream("load-0", 16).await;
    let pid = s.child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let acked = loader.await.unwrap();
    assert!(
        acked.len() > 100,
        "the load acknowledged only {} events",
        acked.len()
    );
    drop(s);

    let s = env.serve(&[]).await;
    assert_all_present(&s, &acked).await;
    let events = s.all_events().await;
    // Acknowledged events are a subset; whatever else committed before the kill is whole.
    assert!(events.len() >= acked.len());
    // The chain continues after the crash.
    let (status, body) = s
        .append("after", &one_event("AfterCrash", json!({"n": 1})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["first_seq"], events.len() as u64);
    s.terminate().await;
    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

async fn sigterm_under_load_finishes_in_flight_appends_and_exits_cleanly(b: Backend) {
    let env = Env::new(b).await;
    let s = Arc::new(env.serve(&[]).await);
    let loader = tokio::spawn(common::load(
        Arc::clone(&s),
        "load",
        16,
        Duration::from_secs(20),
    ));
    s.wait_for_stream("load-0", 16).await;
    let pid = s.child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let acked = loader.await.unwrap();
    let mut s = Arc::try_unwrap(s).ok().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), s.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "graceful shutdown must exit 0, got {status}"
    );
    let s = env.serve(&[]).await;
    assert_all_present(&s, &acked).await;
    s.terminate().await;
}

async fn verify_runs_beside_a_server_that_is_appending(b: Backend) {
    let env = Env::new(b).await;
    let s = Arc::new(env.serve(&[]).await);
    for i in 0..20 {
        s.append("pre", &one_event("Pre", json!({"i": i}))).await;
    }
    let loader = tokio::spawn(common::load(
        Arc::clone(&s),
        "load",
        4,
        Duration::from_secs(2),
    ));
    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok: "), "{out}");
    loader.await.unwrap();
}

async fn sigterm_right_after_start_is_still_a_graceful_stop(b: Backend) {
    let env = Env::new(b).await;
    for _ in 0..5 {
        // The signal handler is installed before "listening" is printed: no window in which
        // SIGTERM would kill the process instead of draining it.
        let s = env.serve(&[]).await;
        let status = s.terminate().await;
        assert!(status.success(), "exit {status}");
    }
}

async fn a_missing_merkle_tree_is_rebuilt_at_start_with_the_same_roots(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&["--checkpoint-every", "5"]).await;
    for i in 0..23 {
        s.append("t", &one_event("E", json!({"i": i}))).await;
    }
    let (_, cp) = s.post_raw("/v1/checkpoints", "").await;
    let (_, _, proof) = s.get("/v1/proofs/inclusion?seq=7&tree_size=23").await;
    s.terminate().await;
    env.sql(&["DELETE FROM merkle_nodes"]).await;
    let s = env.serve(&[]).await;
    // Rebuilt from the entries: the same root, the same proof, and every checkpoint checks.
    assert_eq!(
        s.get("/v1/proofs/inclusion?seq=7&tree_size=23").await.2,
        proof
    );
    assert_eq!(proof["root_hash"], cp["root_hash"]);
    let (_, _, report) = s.get("/v1/audit/verify").await;
    assert_eq!(report["ok"], true, "{report}");
    s.terminate().await;
}

on_both_backends!(
    a_missing_merkle_tree_is_rebuilt_at_start_with_the_same_roots,
    sigterm_right_after_start_is_still_a_graceful_stop,
    a_restart_keeps_everything_and_appends_continue_the_chain,
    sigkill_during_a_write_load_loses_no_acknowledged_event,
    sigterm_under_load_finishes_in_flight_appends_and_exits_cleanly,
    verify_runs_beside_a_server_that_is_appending,
);
