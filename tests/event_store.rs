//! The event-store side over HTTP, on both backends: time travel (`as_of`), reads by type and
//! time range, backward reads, cursors that stay valid while appends continue.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::too_many_lines, reason = "test code")]

mod common;

use std::time::Duration;

use auditledger::entry::Seq;
use auditledger::projections::Counted;
use common::{Backend, Env, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// `(seq, stream_version, type, recorded_at)` of each event of a page.
fn rows(page: &Value) -> Vec<(u64, u64, String, String)> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["stream_version"].as_u64().unwrap(),
                e["type"].as_str().unwrap().to_owned(),
                e["recorded_at"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn versions(page: &Value) -> Vec<u64> {
    rows(page).into_iter().map(|r| r.1).collect()
}

/// Client events only (access entries are the ledger's own).
fn client_seqs(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["stream_id"].as_str().unwrap().starts_with("auditledger:"))
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

async fn ok(s: &Server, path: &str) -> Value {
    let (status, _, body) = s.get(path).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

/// Appends `types` to `stream` in one request; returns their seqs.
async fn append(s: &Server, stream: &str, types: &[&str]) -> Vec<u64> {
    let events: Vec<Value> = types
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"type": t, "data": {"i": i, "cents": 100 * i}}))
        .collect();
    let (status, body) = s.append(stream, &json!({ "events": events })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

fn enc(t: &str) -> String {
    t.replace('+', "%2B").replace(':', "%3A")
}

async fn time_travel_and_filters(backend: Backend) {
    let env = Env::new(backend).await;
    let s = env.serve(&[]).await;
    // Three batches, recorded at distinct times.
    let b1 = append(&s, "acct-1", &["Opened", "Deposited"]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    append(&s, "other-1", &["Opened"]).await;
    let b2 = append(&s, "acct-1", &["Deposited", "Withdrawn"]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b3 = append(&s, "acct-1", &["Deposited", "Closed"]).await;

    let all = ok(&s, "/v1/streams/acct-1/events").await;
    assert_eq!(versions(&all), vec![0, 1, 2, 3, 4, 5]);
    let at = |v: usize| rows(&all)[v].3.clone();

    // as_of a seq: the stream right after that seq was appended, that seq included.
    let p = ok(&s, &format!("/v1/streams/acct-1/events?as_of={}", b2[1])).await;
    assert_eq!(versions(&p), vec![0, 1, 2, 3]);
    let p = ok(&s, &format!("/v1/streams/acct-1/events?as_of={}", b2[0])).await;
    assert_eq!(versions(&p), vec![0, 1, 2]);
    let p = ok(&s, &format!("/v1/streams/acct-1/events?as_of={}", b1[0])).await;
    assert_eq!(versions(&p), vec![0]);
    // as_of a time: what was recorded at or before it.
    let p = ok(
        &s,
        &format!("/v1/streams/acct-1/events?as_of={}", enc(&at(3))),
    )
    .await;
    assert_eq!(versions(&p), vec![0, 1, 2, 3]);
    let p = ok(
        &s,
        &format!(
            "/v1/streams/acct-1/events?as_of={}",
            enc("2001-01-01T00:00:00Z")
        ),
    )
    .await;
    assert!(versions(&p).is_empty());
    assert!(p["next_from_version"].is_null());
    // An offset spelling of the same instant answers the same.
    let p = ok(
        &s,
        &format!(
            "/v1/streams/acct-1/events?as_of={}",
            enc("2999-01-01T01:00:00+01:00")
        ),
    )
    .await;
    assert_eq!(versions(&p).len(), 6);

    // The global log as of a seq and a time: client events up to it, nothing later.
    let g = ok(&s, &format!("/v1/events?as_of={}&limit=1000", b2[1])).await;
    let seqs = client_seqs(&g);
    assert_eq!(seqs.last(), Some(&b2[1]));
    assert_eq!(seqs.len(), 5);
    let g = ok(&s, &format!("/v1/events?as_of={}&limit=1000", enc(&at(1)))).await;
    assert_eq!(client_seqs(&g), b1);

    // By type, on a stream and on the log.
    let p = ok(&s, "/v1/streams/acct-1/events?type=Deposited").await;
    assert_eq!(versions(&p), vec![1, 2, 4]);
    let g = ok(&s, "/v1/events?type=Opened").await;
    assert_eq!(client_seqs(&g).len(), 2);
    assert!(rows(&g).iter().all(|r| r.2 == "Opened"));
    let p = ok(
        &s,
        &format!("/v1/streams/acct-1/events?type=Deposited&as_of={}", b2[1]),
    )
    .await;
    assert_eq!(versions(&p), vec![1, 2]);

    // By time range: [from_time, to_time).
    let p = ok(
        &s,
        &format!(
            "/v1/streams/acct-1/events?from_time={}&to_time={}",
            enc(&at(2)),
            enc(&at(4))
        ),
    )
    .await;
    assert_eq!(versions(&p), vec![2, 3]);
    let g = ok(
        &s,
        &format!("/v1/events?from_time={}&limit=1000", enc(&at(4))),
    )
    .await;
    assert_eq!(&client_seqs(&g)[..], &b3[..]);

    // Backward: the last N events, newest first, and the page before them.
    let p = ok(&s, "/v1/streams/acct-1/events?direction=backward&limit=2").await;
    assert_eq!(versions(&p), vec![5, 4]);
    assert_eq!(p["next_from_version"], 3);
    // Appends in between do not move a cursor.
    append(&s, "acct-1", &["Reopened"]).await;
    let p = ok(
        &s,
        "/v1/streams/acct-1/events?direction=backward&limit=2&from_version=3",
    )
    .await;
    assert_eq!(versions(&p), vec![3, 2]);
    let p = ok(
        &s,
        "/v1/streams/acct-1/events?direction=backward&limit=2&from_version=1",
    )
    .await;
    assert_eq!(versions(&p), vec![1, 0]);
    assert!(p["next_from_version"].is_null());
    let p = ok(
        &s,
        &format!(
            "/v1/streams/acct-1/events?direction=backward&limit=10&as_of={}",
            b2[1]
        ),
    )
    .await;
    assert_eq!(versions(&p), vec![3, 2, 1, 0]);
    let p = ok(
        &s,
        "/v1/streams/acct-1/events?direction=backward&type=Deposited&limit=2",
    )
    .await;
    assert_eq!(versions(&p), vec![4, 2]);
    let g = ok(&s, "/v1/events?direction=backward&limit=1&type=Reopened").await;
    assert_eq!(rows(&g)[0].2, "Reopened");
    let last = rows(&g)[0].0;
    let g = ok(
        &s,
        &format!("/v1/events?direction=backward&limit=3&from_seq={last}"),
    )
    .await;
    let seqs: Vec<u64> = rows(&g).iter().map(|r| r.0).collect();
    assert_eq!(seqs, vec![last, last - 1, last - 2]);
    assert_eq!(g["next_from_seq"], last - 3);

    // Forward cursors stay valid while appends continue.
    let p = ok(&s, "/v1/streams/acct-1/events?limit=4").await;
    assert_eq!(p["next_from_version"], 4);
    append(&s, "acct-1", &["Audited"]).await;
    let p = ok(&s, "/v1/streams/acct-1/events?limit=4&from_version=4").await;
    assert_eq!(versions(&p), vec![4, 5, 6, 7]);

    // Bad input: a clear 400 that writes nothing (no access entry either).
    let before = s.all_entries().await.len();
    for bad in [
        "/v1/streams/acct-1/events?as_of=yesterday",
        "/v1/streams/acct-1/events?as_of=-1",
        "/v1/streams/acct-1/events?as_of=99999999999999999999",
        "/v1/streams/acct-1/events?type=has%20space",
        "/v1/streams/acct-1/events?from_time=2026-13-01T00:00:00Z",
        "/v1/streams/acct-1/events?direction=sideways",
        "/v1/events?from_time=2026-02-01T00:00:00Z&to_time=2026-01-01T00:00:00Z",
        "/v1/events?as_of=1.5",
    ] {
        let (status, ct, body) = s.get(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(ct, "application/problem+json", "{bad}");
        assert!(!body["detail"].as_str().unwrap().is_empty(), "{bad}");
    }
    // all_entries itself reads (and records) pages; compare client events only.
    let after = s.all_entries().await;
    let access_reads = after.len() - before;
    assert!(
        after
            .iter()
            .skip(before)
            .all(|e| e["stream_id"] == "auditledger:access"),
        "a refused read wrote an entry"
    );
    assert!(access_reads <= 2, "{access_reads}");
    s.terminate().await;
}

#[tokio::test]
async fn time_travel_type_time_and_backward_reads_on_sqlite() {
    time_travel_and_filters(Backend::Sqlite).await;
}

#[tokio::test]
async fn time_travel_type_time_and_backward_reads_on_postgres() {
    time_travel_and_filters(Backend::Postgres).await;
}

async fn compensating_events(backend: Backend) {
    let env = Env::new(backend).await;
    let s = env.serve(&[]).await;
    let opened = append(&s, "acct-9", &["Opened", "Charged"]).await;
    let charged = opened[1];
    let other = append(&s, "acct-10", &["Opened"]).await;
    // A refund reverses the charge; an adjustment corrects it.
    let (status, body) = s
        .append(
            "acct-9",
            &json!({"events": [
                {"type": "Refunded", "data": {"cents": 500}, "reverses": charged},
                {"type": "ChargeAdjusted", "data": {"cents": 450}, "corrects": charged,
                 "metadata": {"ticket": "T-17"}},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let refund = body["entries"][0]["seq"].as_u64().unwrap();
    let adjust = body["entries"][1]["seq"].as_u64().unwrap();

    // Returned on read, and chained: in the signed metadata under the reserved key.
    let p = ok(&s, "/v1/streams/acct-9/events").await;
    let ev = &p["events"];
    assert_eq!(ev[2]["reverses"], charged);
    assert!(ev[2]["corrects"].is_null());
    assert_eq!(ev[3]["corrects"], charged);
    assert_eq!(
        ev[3]["metadata"]["auditledger:corrects"],
        charged.to_string()
    );
    assert_eq!(ev[3]["metadata"]["ticket"], "T-17");
    assert!(ev[1].get("corrected_by").is_none());
    // A stream read shows each event with its corrections.
    let p = ok(&s, "/v1/streams/acct-9/events?with_corrections=true").await;
    assert_eq!(
        p["events"][1]["corrected_by"],
        json!([{"seq": refund, "kind": "reverses"}, {"seq": adjust, "kind": "corrects"}])
    );
    assert_eq!(p["events"][0]["corrected_by"], json!([]));
    let p = ok(
        &s,
        "/v1/streams/acct-9/events?with_corrections=true&from_version=1&limit=1",
    )
    .await;
    assert_eq!(p["events"][0]["corrected_by"].as_array().unwrap().len(), 2);

    // Refused with 422, writing nothing: a missing target, another stream's, an erased one,
    // both at once, a reserved metadata key.
    let (status, erased_body) = s
        .append(
            "acct-9",
            &json!({"events": [{"type": "Noted", "subject": "carol@example.com", "data": {"x": 1}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let carol = erased_body["first_seq"].as_u64().unwrap();
    let (status, body) = s
        .post_raw(
            "/v1/subjects/erase",
            json!({"subject": "carol@example.com", "reason": "Art. 17", "request_ref": "R-1"})
                .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = ok(&s, "/v1/streams/acct-9/events").await["events"]
        .as_array()
        .unwrap()
        .len();
    for (event, what) in [
        (
            json!({"type": "X", "data": {}, "corrects": 999_999}),
            "does not exist",
        ),
        (
            json!({"type": "X", "data": {}, "corrects": other[0]}),
            "another stream",
        ),
        (
            json!({"type": "X", "data": {}, "reverses": carol}),
            "erased",
        ),
        (
            json!({"type": "X", "data": {}, "corrects": charged, "reverses": charged}),
            "not both",
        ),
        (
            json!({"type": "X", "data": {}, "metadata": {"auditledger:corrects": "1"}}),
            "ledger's own",
        ),
    ] {
        let (status, body) = s.append("acct-9", &json!({ "events": [event] })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(what),
            "{what}: {body}"
        );
    }
    let after = ok(&s, "/v1/streams/acct-9/events").await["events"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);
    // There is no update or delete of events anywhere in the API.
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ] {
        let r = reqwest::Client::new()
            .request(method.clone(), s.url("/v1/streams/acct-9/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
    }
    // The chain still verifies with compensations in it.
    let report = ok(&s, "/v1/audit/verify").await;
    assert_eq!(report["ok"], true, "{report}");
    s.terminate().await;
}

#[tokio::test]
async fn compensating_events_on_sqlite() {
    compensating_events(Backend::Sqlite).await;
}

#[tokio::test]
async fn compensating_events_on_postgres() {
    compensating_events(Backend::Postgres).await;
}

async fn put_snapshot(
    s: &Server,
    stream: &str,
    version: u64,
    state: &Value,
) -> (StatusCode, Value) {
    let body = json!({"stream_version": version, "state": state});
    s.request(
        reqwest::Method::PUT,
        &format!("/v1/streams/{stream}/snapshots"),
        Some(&body),
    )
    .await
}

/// Appends `n` deposits of 1 cent for alice; returns whether the reply said a snapshot is due.
async fn deposits(s: &Server, stream: &str, n: usize) -> bool {
    let events: Vec<Value> = (0..n)
        .map(|_| json!({"type": "Deposited", "subject": "alice@example.com", "data": {"cents": 1}}))
        .collect();
    let (status, body) = s.append(stream, &json!({ "events": events })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["snapshot_due"].as_bool().unwrap()
}

fn loaded_versions(l: &Value) -> Vec<u64> {
    l["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream_version"].as_u64().unwrap())
        .collect()
}

async fn snapshots(backend: Backend) {
    let env = Env::new(backend).await;
    let s = env.serve(&[]).await;
    // Due every 100 events by default: when an append crosses a multiple of 100.
    assert!(deposits(&s, "acct-s", 100).await);
    assert!(deposits(&s, "acct-s", 100).await);
    assert!(!deposits(&s, "acct-s", 50).await);

    // No snapshot yet: the events from 0, paged.
    let l = ok(&s, "/v1/streams/acct-s/load").await;
    assert!(l["snapshot"].is_null());
    assert_eq!(loaded_versions(&l), (0..100).collect::<Vec<_>>());
    assert_eq!(l["next_from_version"], 100);
    assert_eq!(l["stream_version"], 249);

    let (status, body) = put_snapshot(&s, "acct-s", 199, &json!({"balance": 200})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = put_snapshot(&s, "acct-s", 99, &json!({"balance": 100})).await;
    assert_eq!(status, StatusCode::CREATED);
    // The latest snapshot and only the events after it.
    let l = ok(&s, "/v1/streams/acct-s/load").await;
    assert_eq!(
        l["snapshot"],
        json!({"stream_version": 199, "state": {"balance": 200}})
    );
    assert_eq!(loaded_versions(&l), (200..250).collect::<Vec<_>>());
    assert!(l["next_from_version"].is_null());
    // As of an earlier version: the snapshot at or before it.
    let l = ok(&s, "/v1/streams/acct-s/load?version=150").await;
    assert_eq!(l["snapshot"]["stream_version"], 99);
    assert_eq!(loaded_versions(&l), (100..=150).collect::<Vec<_>>());
    assert_eq!(l["stream_version"], 150);
    // A load that discloses only the snapshot (no events after it) is recorded too.
    let before = env.access_entries().await.len();
    let l = ok(&s, "/v1/streams/acct-s/load?version=199").await;
    assert_eq!(l["snapshot"]["stream_version"], 199);
    assert!(loaded_versions(&l).is_empty());
    let after = env.access_entries().await;
    assert_eq!(
        after.len(),
        before + 1,
        "a snapshot-only load wrote no access entry"
    );
    assert_eq!(after[before]["action"], "read_stream");
    // The state is sealed at rest: not in the database in clear.
    let clear = env
        .sql_count("SELECT COUNT(*) FROM snapshots WHERE sealed LIKE '%balance%'")
        .await;
    assert_eq!(clear, 0);

    // An attacker copies the snapshot of version 199 to version 249: it does not open there,
    // is ignored, and the load falls back to the genuine one.
    env.sql(&[
        "INSERT INTO snapshots (stream_id, stream_version, sealed, keys, created_at) \
               SELECT stream_id, 249, sealed, keys, created_at FROM snapshots \
               WHERE stream_id = 'acct-s' AND stream_version = 199",
    ])
    .await;
    let l = ok(&s, "/v1/streams/acct-s/load").await;
    assert_eq!(l["snapshot"]["stream_version"], 199);
    assert_eq!(loaded_versions(&l).len(), 50);
    let metrics = s.metrics().await;
    assert!(
        common::metric(&metrics, "auditledger_snapshots_ignored_total").is_some_and(|n| n > 0),
        "{metrics}"
    );

    // Bad input writes nothing.
    for (version, state, want) in [
        (999, json!({"b": 1}), StatusCode::NOT_FOUND),
        (5, json!([1, 2]), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (status, body) = put_snapshot(&s, "acct-s", version, &state).await;
        assert_eq!(status, want, "{body}");
    }
    let (status, _) = put_snapshot(&s, "auditledger:access", 0, &json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        env.sql_count("SELECT COUNT(*) FROM snapshots WHERE stream_version IN (5, 999)")
            .await,
        0
    );

    // A stream without subjects: sealed under the system key, loads the same way.
    append(&s, "ops-1", &["Started", "Stopped"]).await;
    let (status, _) = put_snapshot(&s, "ops-1", 1, &json!({"running": false})).await;
    assert_eq!(status, StatusCode::CREATED);
    let l = ok(&s, "/v1/streams/ops-1/load").await;
    assert_eq!(l["snapshot"]["state"]["running"], false);

    // Erasing alice destroys the key her snapshots are sealed under: they are unusable, the
    // load replays the (erased) events, and no new snapshot is taken.
    let (status, body) = s
        .post_raw(
            "/v1/subjects/erase",
            json!({"subject": "alice@example.com", "reason": "Art. 17", "request_ref": "R-9"})
                .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let l = ok(&s, "/v1/streams/acct-s/load").await;
    assert!(l["snapshot"].is_null(), "{}", l["snapshot"]);
    assert_eq!(l["events"][0]["erased"], true);
    let (status, body) = put_snapshot(&s, "acct-s", 249, &json!({"balance": 250})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    s.terminate().await;
}

#[tokio::test]
async fn snapshots_on_sqlite() {
    snapshots(Backend::Sqlite).await;
}

#[tokio::test]
async fn snapshots_on_postgres() {
    snapshots(Backend::Postgres).await;
}

/// A database writer without the signing key (THREAT-MODEL.md §3.1) clears the `subject`
/// column of a stream's entries while a client stores a snapshot, then puts the column back, so
/// that the chain verifies again. A snapshot sealed then under the system key alone would
/// outlive the subject's erasure: the PUT must not trust the column.
async fn a_cleared_subject_column_does_not_let_a_snapshot_outlive_erasure(backend: Backend) {
    let env = Env::new(backend).await;
    let s = env.serve(&[]).await;
    deposits(&s, "acct-t", 3).await;
    // A genuine snapshot first: the stream's entries up to version 0 verified, and remembered.
    let (status, body) = put_snapshot(&s, "acct-t", 0, &json!({"balance": 1})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let drop_trigger = match backend {
        Backend::Sqlite => "DROP TRIGGER entries_no_update",
        Backend::Postgres => "DROP TRIGGER entries_no_update ON entries",
    };
    env.sql(&[
        drop_trigger,
        "CREATE TABLE stash AS SELECT seq, subject FROM entries WHERE stream_id = 'acct-t'",
        "UPDATE entries SET subject = NULL WHERE stream_id = 'acct-t'",
    ])
    .await;
    let (put_status, put_body) = put_snapshot(&s, "acct-t", 2, &json!({"balance": 3})).await;
    env.sql(&[
        "UPDATE entries SET subject = (SELECT stash.subject FROM stash WHERE stash.seq = \
         entries.seq) WHERE stream_id = 'acct-t'",
        "DROP TABLE stash",
    ])
    .await;
    // The refusal is not remembered: with the column back, the entries verify again, and a
    // snapshot is sealed under alice's key.
    let (status, body) = put_snapshot(&s, "acct-t", 1, &json!({"balance": 2})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let tampered_seq = env
        .sql_count("SELECT seq FROM entries WHERE stream_id = 'acct-t' AND stream_version = 1")
        .await;

    let (status, body) = s
        .post_raw(
            "/v1/subjects/erase",
            json!({"subject": "alice@example.com", "reason": "Art. 17", "request_ref": "R-10"})
                .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let l = ok(&s, "/v1/streams/acct-t/load").await;
    assert!(
        l["snapshot"].is_null(),
        "a snapshot stored while the subject column was cleared outlived the subject's \
         erasure: {}",
        l["snapshot"]
    );
    assert_eq!(loaded_versions(&l), vec![0, 1, 2]);

    // The PUT itself was refused: the entries after the verified version 0 no longer hash to
    // what was signed, so the stream's subjects could not be known.
    assert_eq!(
        put_status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "the PUT over a cleared subject column: {put_body}"
    );
    assert_eq!(
        put_body["type"], "urn:auditledger:problem:integrity-failure",
        "{put_body}"
    );
    assert_eq!(put_body["seq"], tampered_seq, "{put_body}");
    assert_eq!(
        env.sql_count(
            "SELECT COUNT(*) FROM snapshots WHERE stream_id = 'acct-t' AND stream_version = 2"
        )
        .await,
        0
    );
    s.terminate().await;
}

#[tokio::test]
async fn a_cleared_subject_column_does_not_let_a_snapshot_outlive_erasure_on_sqlite() {
    a_cleared_subject_column_does_not_let_a_snapshot_outlive_erasure(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_cleared_subject_column_does_not_let_a_snapshot_outlive_erasure_on_postgres() {
    a_cleared_subject_column_does_not_let_a_snapshot_outlive_erasure(Backend::Postgres).await;
}

/// The keys a PUT verifies a stream's entries against come from the keys directory: a retired
/// key (with its range) still vouches for the entries it signed before a rotation.
async fn a_stream_written_across_a_key_rotation_verifies_for_a_snapshot(backend: Backend) {
    let env = Env::new(backend).await;
    let s = env.serve(&[]).await;
    deposits(&s, "acct-r", 2).await;
    let (code, out, err) = env.cli(&["rotate-signing-key", "--timeout-secs", "30"]);
    assert_eq!(code, 0, "{out}{err}");
    deposits(&s, "acct-r", 2).await;
    let (status, body) = put_snapshot(&s, "acct-r", 3, &json!({"balance": 4})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let l = ok(&s, "/v1/streams/acct-r/load").await;
    assert_eq!(l["snapshot"]["stream_version"], 3);
    s.terminate().await;
}

#[tokio::test]
async fn a_stream_written_across_a_key_rotation_verifies_for_a_snapshot_on_sqlite() {
    a_stream_written_across_a_key_rotation_verifies_for_a_snapshot(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_stream_written_across_a_key_rotation_verifies_for_a_snapshot_on_postgres() {
    a_stream_written_across_a_key_rotation_verifies_for_a_snapshot(Backend::Postgres).await;
}

#[tokio::test]
async fn the_snapshot_interval_is_set_per_stream_prefix() {
    let env = Env::new(Backend::Sqlite).await;
    let s = env.serve(&["--snapshot-every", "3,acct-=2,audit-=0"]).await;
    assert!(!deposits(&s, "order-1", 2).await);
    assert!(deposits(&s, "order-1", 1).await);
    assert!(deposits(&s, "acct-1", 2).await);
    assert!(!deposits(&s, "audit-1", 50).await);
    s.terminate().await;
}

async fn put_schema(s: &Server, event_type: &str, body: &Value) -> (StatusCode, Value) {
    s.request(
        reqwest::Method::PUT,
        &format!("/v1/schemas/{event_type}"),
        Some(body),
    )
    .await
}

async fn upcasting(backend: Backend) {
    let env = Env::new(backend).await;
    let s = env.serve(&[]).await;
    // Written before any registration, as version 1.
    append_raw(
        &s,
        "pay-1",
        json!([{"type": "PaymentMade", "data": {"amount": 500, "status": "A"}}]),
    )
    .await;
    let v2 =
        json!({"version": 2, "upcast": [{"rename": {"from": "amount", "to": "amount_cents"}}]});
    let v3 = json!({"version": 3, "upcast": [
        {"add": {"field": "currency", "value": "EUR"}},
        {"map": {"field": "status", "table": {"A": "active", "C": "closed"}}},
        {"move": {"from": "card.last4", "to": "last4"}}
    ], "schema": {"type": "object", "required": ["amount_cents", "currency"],
                  "properties": {"amount_cents": {"type": "integer"}}}});
    let (status, body) = put_schema(
        &s,
        "PaymentMade",
        &json!({"versions": [{"version": 1}, v2, v3]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["latest_version"], 3);
    let (status, _, got) = s.get("/v1/schemas/PaymentMade").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        got["versions"][1]["upcast"][0]["rename"]["to"],
        "amount_cents"
    );

    // Reads return the latest version; the stored entry is unchanged (raw=true).
    let p = ok(&s, "/v1/streams/pay-1/events").await;
    let e = &p["events"][0];
    assert_eq!(
        e["data"],
        json!({"amount_cents": 500, "currency": "EUR", "status": "active"})
    );
    assert_eq!(
        (
            e["schema_version"].as_u64(),
            e["stored_schema_version"].as_u64()
        ),
        (Some(3), Some(1))
    );
    let raw = ok(&s, "/v1/streams/pay-1/events?raw=true").await;
    assert_eq!(
        raw["events"][0]["data"],
        json!({"amount": 500, "status": "A"})
    );
    assert_eq!(raw["events"][0]["schema_version"], 1);
    assert!(raw["events"][0].get("stored_schema_version").is_none());
    assert_eq!(raw["events"][0]["entry_hash"], e["entry_hash"]);
    let g = ok(&s, "/v1/events?type=PaymentMade").await;
    assert_eq!(g["events"][0]["schema_version"], 3);

    // Writes: an unknown higher version, or data breaking the version's schema: 422, nothing
    // written, and the reply names where, never the value.
    for (event, what) in [
        (
            json!({"type": "PaymentMade", "schema_version": 4, "data": {}}),
            "not registered",
        ),
        (
            json!({"type": "PaymentMade", "schema_version": 3,
                   "data": {"amount_cents": "SECRET-VALUE", "currency": "EUR"}}),
            "/amount_cents",
        ),
        (
            json!({"type": "PaymentMade", "schema_version": 3, "data": {"amount_cents": 1}}),
            "JSON Schema",
        ),
    ] {
        let (status, body) = s.append("pay-1", &json!({ "events": [event] })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(what), "{detail}");
        assert!(!detail.contains("SECRET-VALUE"), "{detail}");
    }
    assert_eq!(
        ok(&s, "/v1/streams/pay-1/events").await["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A key of the data may itself be personal data: a schema error never quotes it either.
    let tagged = json!({"versions": [{"version": 1,
        "schema": {"type": "object", "additionalProperties": {"type": "integer"}}}]});
    assert_eq!(put_schema(&s, "Tagged", &tagged).await.0, StatusCode::OK);
    let (status, body) = s
        .append(
            "pay-1",
            &json!({"events": [{"type": "Tagged", "data": {"SECRET-KEY": "x"}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("additionalProperties"), "{detail}");
    assert!(!detail.contains("SECRET-KEY"), "{detail}");
    // A version-3 write is stored and read as is.
    append_raw(
        &s,
        "pay-1",
        json!([{"type": "PaymentMade", "schema_version": 3,
                "data": {"amount_cents": 7, "currency": "USD", "status": "closed"}}]),
    )
    .await;
    let p = ok(&s, "/v1/streams/pay-1/events").await;
    assert_eq!(p["events"][1]["data"]["currency"], "USD");
    assert!(p["events"][1].get("stored_schema_version").is_none());

    // Registered versions never change; new ones may be added.
    let altered = json!({"versions": [{"version": 1},
        {"version": 2, "upcast": [{"rename": {"from": "amount", "to": "cents"}}]}, v3]});
    let (status, body) = put_schema(&s, "PaymentMade", &altered).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("version 2"),
        "{body}"
    );
    for bad in [
        json!({"versions": [{"version": 2}]}),
        json!({"versions": [{"version": 1}, {"version": 2, "upcast": [{"explode": {"field": "a"}}]}]}),
        json!({"versions": [{"version": 1, "schema": {"type": 12}}]}),
        json!({"versions": []}),
    ] {
        let (status, body) = put_schema(&s, "Other", &bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    let (status, _, _) = s.get("/v1/schemas/Other").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let v4 = json!({"version": 4, "upcast": [{"remove": {"field": "status"}}]});
    let (status, body) = put_schema(
        &s,
        "PaymentMade",
        &json!({"versions": [{"version": 1}, v2, v3, v4]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let p = ok(&s, "/v1/streams/pay-1/events").await;
    assert_eq!(p["events"][0]["schema_version"], 4);
    assert!(p["events"][0]["data"].get("status").is_none());

    // Registrations are ledger entries; the chain verifies.
    let registrations = s
        .all_entries()
        .await
        .into_iter()
        .filter(|e| e["stream_id"] == "auditledger:schemas")
        .count();
    // PaymentMade twice, Tagged once.
    assert_eq!(registrations, 3);
    assert_eq!(ok(&s, "/v1/audit/verify").await["ok"], true);
    // A restarted service knows them (from the ledger).
    s.terminate().await;
    let s = env.serve(&[]).await;
    let p = ok(&s, "/v1/streams/pay-1/events").await;
    assert_eq!(p["events"][0]["schema_version"], 4);
    s.terminate().await;
}

async fn append_raw(s: &Server, stream: &str, events: Value) {
    let (status, body) = s.append(stream, &json!({ "events": events })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn upcasting_on_sqlite() {
    upcasting(Backend::Sqlite).await;
}

#[tokio::test]
async fn upcasting_on_postgres() {
    upcasting(Backend::Postgres).await;
}

/// The read models' rows, as text, in a fixed order.
async fn read_models(env: &Env) -> Vec<String> {
    let hex = match env.backend {
        Backend::Sqlite => "lower(hex(subject))",
        Backend::Postgres => "encode(subject, 'hex')",
    };
    let queries = [
        "SELECT 'stream ' || stream_id || ' ' || events || ' ' || first_seq || ' ' || last_seq \
         || ' ' || last_version || ' ' || last_recorded_at FROM stream_catalogue ORDER BY stream_id"
            .to_owned(),
        format!(
            "SELECT 'subject ' || {hex} || ' ' || stream_id || ' ' || events || ' ' || first_seq \
             || ' ' || last_seq FROM subject_streams ORDER BY 1"
        ),
        "SELECT 'count ' || event_type || ' ' || day || ' ' || events FROM type_day_counts \
         ORDER BY 1"
            .to_owned(),
        "SELECT 'position ' || position FROM projection_positions".to_owned(),
    ];
    let mut out = Vec::new();
    for q in queries {
        let rows: Vec<String> = match env.database_url() {
            None => {
                let db = common::raw_db(env.path()).await;
                let r = sqlx::query_scalar(&q).fetch_all(&db).await.unwrap();
                db.close().await;
                r
            }
            Some(url) => {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                let r = sqlx::query_scalar(&q).fetch_all(&mut conn).await.unwrap();
                conn.close().await.unwrap();
                r
            }
        };
        out.extend(rows);
    }
    out
}

async fn projections(backend: Backend) {
    let env = Env::new(backend).await;
    let s = env.serve(&[]).await;
    append_raw(
        &s,
        "acct-1",
        json!([
            {"type": "Opened", "subject": "gus@example.com", "data": {}},
            {"type": "Deposited", "subject": "gus@example.com", "data": {"cents": 5}},
            {"type": "Deposited", "subject": "hal@example.com", "data": {"cents": 7}},
        ]),
    )
    .await;
    append_raw(
        &s,
        "acct-2",
        json!([{"type": "Opened", "subject": "hal@example.com", "data": {}}]),
    )
    .await;
    for _ in 0..3 {
        append_raw(&s, "ops-1", json!([{"type": "Tick", "data": {}}])).await;
    }
    // Maintained asynchronously: wait until they cover every entry.
    let mut page = Value::Null;
    for _ in 0..200 {
        page = ok(&s, "/v1/streams?prefix=acct-").await;
        let entries = env.sql_count("SELECT COUNT(*) FROM entries").await;
        if page["position"].as_i64() == Some(entries) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let streams = page["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 2, "{page}");
    assert_eq!(streams[0]["stream_id"], "acct-1");
    assert_eq!(streams[0]["events"], 3);
    assert_eq!(streams[0]["last_version"], 2);
    assert_eq!(streams[1]["events"], 1);
    let p = ok(&s, "/v1/streams?prefix=acct-&limit=1").await;
    assert_eq!(p["next_after"], "acct-1");
    let p = ok(&s, "/v1/streams?prefix=acct-&after=acct-1").await;
    assert_eq!(p["streams"][0]["stream_id"], "acct-2");
    let counts = ok(&s, "/v1/stats/events").await;
    let deposited: u64 = counts["counts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "Deposited")
        .map(|c| c["events"].as_u64().unwrap())
        .sum();
    assert_eq!(deposited, 2);
    let (status, _, _) = s.get("/v1/stats/events?from=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("auditledger_projection_lag_entries"),
        "{metrics}"
    );
    s.terminate().await;

    // A rebuild from scratch gives exactly what live maintenance gave.
    let live = read_models(&env).await;
    assert!(live.iter().any(|l| l.starts_with("subject ")), "{live:?}");
    let (code, _, err) = env.cli(&["rebuild-projections"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rebuilt the read models"), "{err}");
    assert_eq!(read_models(&env).await, live);
}

#[tokio::test]
async fn read_models_maintained_live_equal_a_rebuild_on_sqlite() {
    projections(Backend::Sqlite).await;
}

#[tokio::test]
async fn read_models_maintained_live_equal_a_rebuild_on_postgres() {
    projections(Backend::Postgres).await;
}

/// The read models' own read of the log (`Store::read_counted`, the counted columns alone)
/// gives, page by page, exactly the header fields a full read decodes: with subjects and
/// without, metadata, several streams and types, and pages that end inside a request.
async fn counted_reads(backend: Backend) {
    let env = Env::new(backend).await;
    let s = env.serve(&[]).await;
    append_raw(
        &s,
        "acct-1",
        json!([
            {"type": "Opened", "subject": "gus@example.com", "metadata": {"source": "crm"},
             "data": {}},
            {"type": "Deposited", "subject": "gus@example.com", "data": {"cents": 5}},
            {"type": "Deposited", "subject": "hal@example.com", "metadata": {"a": "1", "b": "2"},
             "data": {}},
        ]),
    )
    .await;
    append_raw(
        &s,
        "acct-2",
        json!([{"type": "Opened", "subject": "hal@example.com", "data": {}}]),
    )
    .await;
    for i in 0..4 {
        append_raw(
            &s,
            &format!("ops-{}", i % 2),
            json!([{"type": "Tick", "metadata": {"i": i.to_string()}, "data": {}},
                   {"type": "Tock", "data": {}}]),
        )
        .await;
    }
    s.terminate().await;

    let dirs = auditledger::config::Dirs {
        data_dir: env.path().join("data"),
        keys_dir: env.path().join("keys"),
        database_url: env.database_url().map(str::to_owned),
        database_pool_size: 2,
        sqlite_max_db_mib: None,
    };
    let (store, _lock) = auditledger::backend::open(&dirs, auditledger::backend::Access::ReadOnly)
        .await
        .unwrap();
    let full = |from: u64, limit: u32| {
        let store = std::sync::Arc::clone(&store);
        async move {
            store
                .read_global(Seq(from), None, limit)
                .await
                .unwrap()
                .into_iter()
                .map(|r| Counted::from(&r.into_record().unwrap().entry.header))
                .collect::<Vec<_>>()
        }
    };
    let all = full(0, 1000).await;
    assert!(all.len() >= 12, "{all:?}");
    assert_eq!(store.read_counted(Seq(0), 1000).await.unwrap(), all);
    // What the comparison must cover for it to mean anything.
    assert!(all.iter().any(|c| c.subject.is_some()) && all.iter().any(|c| c.subject.is_none()));
    let streams: std::collections::BTreeSet<_> = all.iter().map(|c| c.stream_id.as_str()).collect();
    let types: std::collections::BTreeSet<_> = all.iter().map(|c| c.event_type.as_str()).collect();
    assert!(
        streams.len() >= 4 && types.len() >= 4,
        "{streams:?} {types:?}"
    );
    // Pages of 5 end inside requests, and the last one short; beyond the head there is nothing.
    let mut paged = Vec::new();
    let mut from = 0;
    loop {
        let page = store.read_counted(Seq(from), 5).await.unwrap();
        assert_eq!(page, full(from, 5).await, "page from {from}");
        let Some(last) = page.last() else { break };
        from = last.seq.0 + 1;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    assert_eq!(from, u64::try_from(all.len()).unwrap());
    store.close().await;
}

#[tokio::test]
async fn counted_reads_equal_decoded_headers_on_sqlite() {
    counted_reads(Backend::Sqlite).await;
}

#[tokio::test]
async fn counted_reads_equal_decoded_headers_on_postgres() {
    counted_reads(Backend::Postgres).await;
}

/// Registrations racing to define the same new version: at most one wins, and the version
/// reads as the winner defined it (never overwritten by a later, unchecked registration).
async fn racing_registrations(backend: Backend) {
    let env = Env::new(backend).await;
    let s = env.serve(&[]).await;
    let v1 = json!({"versions": [{"version": 1}]});
    assert_eq!(put_schema(&s, "Race", &v1).await.0, StatusCode::OK);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = s.client.clone();
        let url = s.url("/v1/schemas/Race");
        tasks.push(tokio::spawn(async move {
            let body = json!({"versions": [{"version": 1},
                {"version": 2, "upcast": [{"add": {"field": format!("f{i}"), "value": 1}}]}]});
            let r = client
                .put(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            (i, r.status())
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, status) = t.await.unwrap();
        if status == StatusCode::OK {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let (_, _, got) = s.get("/v1/schemas/Race").await;
    assert_eq!(
        got["versions"][1]["upcast"][0]["add"]["field"],
        format!("f{}", winners[0])
    );
    s.terminate().await;
}

#[tokio::test]
async fn racing_registrations_on_sqlite() {
    racing_registrations(Backend::Sqlite).await;
}

#[tokio::test]
async fn racing_registrations_on_postgres() {
    racing_registrations(Backend::Postgres).await;
}
