//! Missing data is tampering, never erasure: a payload set to NULL, a live subject's data key
//! deleted, the system key deleted. `verify`, the signed report and `verify-bundle` all fail at
//! the right seq, and reads name the seq instead of answering `erased: true`. Both backends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, Env, Server};
use serde_json::{Value, json};

/// A ledger of: 0 Alice (subject), 1 no subject, 2 Bob (subject), 3 Bob again, 4 no subject;
/// then Carol (5) erased (6). Stopped when returned.
async fn ledger(env: &Env) {
    let s = env.serve(&[]).await;
    let ev = |subject: Option<&str>, i: u64| {
        let mut e = json!({"type": "E", "data": {"i": i}});
        if let Some(sub) = subject {
            e["subject"] = json!(sub);
        }
        json!({"events": [e]})
    };
    for (i, sub) in [
        Some("alice"),
        None,
        Some("bob"),
        Some("bob"),
        None,
        Some("carol"),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = s.append("acct", &ev(sub, i as u64)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = s
        .post_raw(
            "/v1/subjects/erase",
            json!({"subject": "carol", "reason": "Art. 17", "request_ref": "T-1"}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.terminate().await;
}

fn handle_of(events: &[Value], seq: usize) -> String {
    events[seq]["subject"].as_str().unwrap().to_owned()
}

/// `verify`, the API report and `verify-bundle` all name `kind` at `seq`; a read of `seq`
/// answers an integrity error naming it.
async fn all_verifiers_say(env: &Env, seq: u64, kind: &str) {
    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!("FAILED at seq {seq}: {kind}")),
        "verify: expected seq {seq} {kind}: {out}"
    );
    let s: Server = env.serve(&[]).await;
    let (_, _, report) = s.get("/v1/audit/verify").await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_failure"]["seq"], seq, "{report}");
    assert_eq!(report["first_failure"]["kind"], kind, "{report}");
    let (status, _, body) = s.get(&format!("/v1/events?from_seq={seq}&limit=1")).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains(&seq.to_string()),
        "the read names the seq: {body}"
    );
    assert!(
        !body.to_string().contains("\"erased\":true"),
        "never reads as erased: {body}"
    );
    s.terminate().await;
}

async fn a_payload_set_to_null_is_tampering_even_without_a_subject(backend: Backend) {
    let env = Env::new(backend).await;
    ledger(&env).await;
    let drop_trigger = match backend {
        Backend::Sqlite => "DROP TRIGGER entries_no_update",
        Backend::Postgres => "DROP TRIGGER entries_no_update ON entries",
    };
    env.sql(&[
        drop_trigger,
        "UPDATE entries SET payload = NULL WHERE seq = 1",
    ])
    .await;
    all_verifiers_say(&env, 1, "missing_payload").await;
    // And offline: the bundle carries the null payload.
    let (code, out, err) = env.cli(&["export", "--out", "b.ndjson"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = env.cli(&[
        "verify-bundle",
        "b.ndjson",
        "--public-key",
        "keys/signing.pub",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("FAILED at seq 1: missing_payload"), "{out}");
}

async fn a_live_subjects_deleted_key_is_tampering_not_erasure(backend: Backend) {
    let env = Env::new(backend).await;
    ledger(&env).await;
    let s = env.serve(&[]).await;
    let events = s.all_events().await;
    s.terminate().await;
    let bob = handle_of(&events, 2);
    let delete = match backend {
        Backend::Sqlite => format!("DELETE FROM data_keys WHERE key_ref = x'01{bob}'"),
        Backend::Postgres => format!("DELETE FROM data_keys WHERE key_ref = '\\x01{bob}'::bytea"),
    };
    env.sql(&[&delete]).await;
    all_verifiers_say(&env, 2, "missing_key").await;
}

async fn a_deleted_system_key_is_tampering(backend: Backend) {
    let env = Env::new(backend).await;
    ledger(&env).await;
    let delete = match backend {
        Backend::Sqlite => "DELETE FROM data_keys WHERE substr(key_ref, 1, 1) = x'00'",
        Backend::Postgres => {
            "DELETE FROM data_keys WHERE substring(key_ref from 1 for 1) = '\\x00'::bytea"
        }
    };
    env.sql(&[delete]).await;
    // The first entry sealed under the system key is seq 1. (A server started now would make a
    // new system key for new entries; the old ones stay unreadable and keep failing.)
    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("FAILED at seq 1: missing_key"), "{out}");
}

async fn an_erased_subject_still_verifies_and_reads_as_erased(backend: Backend) {
    let env = Env::new(backend).await;
    ledger(&env).await;
    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    let s = env.serve(&[]).await;
    let events = s.all_events().await;
    assert_eq!(events[5]["erased"], true);
    assert_eq!(events[5]["data"], Value::Null);
    assert_eq!(events[0]["erased"], false);
    s.terminate().await;
}

on_both_backends!(
    a_payload_set_to_null_is_tampering_even_without_a_subject,
    a_live_subjects_deleted_key_is_tampering_not_erasure,
    a_deleted_system_key_is_tampering,
    an_erased_subject_still_verifies_and_reads_as_erased,
);
