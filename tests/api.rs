//! The HTTP contract, against the real server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::needless_pass_by_value,
    clippy::too_many_lines,
    reason = "test code"
)]

mod common;

use common::{Backend, Env, Server, one_event};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn appended_events_read_back_with_their_chain_fields(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&[]).await;
    let (status, body) = s
        .append(
            "acct-1",
            &json!({"expected_version": "no_stream", "events": [
                {"type": "AccountOpened", "data": {"owner": "ACME", "limit": 5000},
                 "metadata": {"source": "core-banking", "correlation_id": "c-1"}},
                {"type": "FundsDeposited", "schema_version": 2, "data": {"amount": 125.5}}
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["first_seq"], 0);
    assert_eq!(body["last_seq"], 1);
    assert_eq!(body["stream_version"], 1);
    let acked = body["entries"].as_array().unwrap();
    assert_eq!(acked.len(), 2);

    let (status, _, page) = s.get("/v1/streams/acct-1/events").await;
    assert_eq!(status, StatusCode::OK);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    let (e0, e1) = (&events[0], &events[1]);
    assert_eq!(e0["seq"], 0);
    assert_eq!(e0["stream_id"], "acct-1");
    assert_eq!(e0["stream_version"], 0);
    assert_eq!(e0["type"], "AccountOpened");
    assert_eq!(e0["schema_version"], 1);
    assert_eq!(e0["subject"], Value::Null);
    assert_eq!(e0["data"], json!({"owner": "ACME", "limit": 5000}));
    assert_eq!(e0["metadata"]["source"], "core-banking");
    assert_eq!(e0["erased"], false);
    assert_eq!(e0["entry_hash"], acked[0]["entry_hash"]);
    assert_eq!(e0["prev_hash"], "0".repeat(64));
    assert_eq!(e1["prev_hash"], e0["entry_hash"]);
    assert_eq!(e1["schema_version"], 2);
    assert_eq!(e1["data"], json!({"amount": 125.5}));
    assert_eq!(e1["entry_hash"], acked[1]["entry_hash"]);
    for e in events {
        assert_eq!(e["signature"].as_str().unwrap().len(), 128);
        assert!(e["recorded_at"].as_str().unwrap().ends_with('Z'));
        let hex_ok = |f: &str| {
            e[f].as_str()
                .unwrap()
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        };
        assert!(hex_ok("entry_hash") && hex_ok("signature") && hex_ok("key_id"));
    }

    // The key that signed is published, with its range.
    let (_, _, keys) = s.get("/v1/keys").await;
    let key = &keys["keys"][0];
    assert_eq!(key["key_id"], e0["key_id"]);
    assert_eq!(key["first_seq"], 0);
    assert_eq!(
        key["last_seq"],
        Value::Null,
        "the current key has no end yet"
    );
    assert_eq!(key["active"], true);

    // Global log, and paging.
    let (_, _, page) = s.get("/v1/events?from_seq=1&limit=1").await;
    assert_eq!(page["events"][0]["seq"], 1);
    let (_, _, page) = s.get("/v1/streams/acct-1/events?from_version=1").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_from_version"], Value::Null);
    s.terminate().await;
}

async fn a_stale_expected_version_is_refused_with_409_and_writes_nothing(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&[]).await;
    let body = json!({"expected_version": "no_stream", "events": [{"type": "Opened", "data": {}}]});
    assert_eq!(s.append("order-9", &body).await.0, StatusCode::CREATED);
    let (status, problem) = s.append("order-9", &body).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["type"], "urn:auditledger:problem:version-conflict");
    assert_eq!(problem["actual_version"], 0);
    assert_eq!(problem["expected_version"], "no_stream");

    let next = |v: Value| json!({"expected_version": v, "events": [{"type": "Paid", "data": {}}]});
    assert_eq!(
        s.append("order-9", &next(json!(5))).await.0,
        StatusCode::CONFLICT
    );
    let (status, ok) = s.append("order-9", &next(json!(0))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(ok["stream_version"], 1);
    // The same expected version again is now stale.
    assert_eq!(
        s.append("order-9", &next(json!(0))).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        s.append("order-9", &next(json!("any"))).await.0,
        StatusCode::CREATED
    );
    assert_eq!(s.all_events().await.len(), 3);
    s.terminate().await;
}

async fn a_hundred_concurrent_appenders_make_one_dense_chain_that_verifies(b: Backend) {
    let env = Env::new(b).await;
    let s = std::sync::Arc::new(env.serve(&[]).await);
    let mut tasks = Vec::new();
    for w in 0..100 {
        let s = std::sync::Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..5 {
                // Half the writers share one stream, to make version checks contend too.
                let stream = if w % 2 == 0 {
                    "shared".to_owned()
                } else {
                    format!("w-{w}")
                };
                let n = 1 + (w + i) % 3;
                let events: Vec<Value> = (0..n)
                    // Five subjects shared by every stream: a batch resolves many at once.
                    .map(|k| {
                        json!({"type": "Tick", "subject": format!("s{}@example.com", (w + k) % 5),
                                    "data": {"w": w, "i": i, "k": k}})
                    })
                    .collect();
                let (status, body) = s.append(&stream, &json!({"events": events})).await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                for e in body["entries"].as_array().unwrap() {
                    acked.push((e["seq"].as_u64().unwrap(), e["entry_hash"].clone()));
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let events = s.all_events().await;
    assert_eq!(events.len(), acked.len());
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64, "seq must be dense");
        if i > 0 {
            assert_eq!(e["prev_hash"], events[i - 1]["entry_hash"], "fork at {i}");
        }
    }
    for (seq, hash) in &acked {
        assert_eq!(&events[*seq as usize]["entry_hash"], hash);
    }
    // Stream versions are dense within every stream, the shared one too.
    let mut by_stream: std::collections::BTreeMap<String, Vec<u64>> =
        std::collections::BTreeMap::new();
    // One identifier, one handle, whichever batch and stream first named it.
    let mut handles: std::collections::BTreeMap<u64, String> = std::collections::BTreeMap::new();
    for e in &events {
        by_stream
            .entry(e["stream_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e["stream_version"].as_u64().unwrap());
        let identifier = (e["data"]["w"].as_u64().unwrap() + e["data"]["k"].as_u64().unwrap()) % 5;
        let handle = e["subject"].as_str().unwrap().to_owned();
        assert_eq!(
            handles.entry(identifier).or_insert_with(|| handle.clone()),
            &handle
        );
    }
    assert_eq!(by_stream.len(), 51);
    for versions in by_stream.values() {
        assert_eq!(versions, &(0..versions.len() as u64).collect::<Vec<_>>());
    }
    let distinct: std::collections::BTreeSet<&String> = handles.values().collect();
    assert_eq!(distinct.len(), 5);
    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    // Every acknowledged event, and the access entries of the reads above (they decrypted
    // personal data).
    let verified: usize = out
        .split(" entries verified")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(verified > acked.len(), "{out}");
}

async fn assert_problem(
    s: &Server,
    path: &str,
    body: impl Into<reqwest::Body>,
    status: StatusCode,
    mention: &str,
) {
    let r = s
        .client
        .post(s.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), status, "{path}");
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "{path}"
    );
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["status"], status.as_u16());
    assert!(
        p["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:auditledger:problem:")
    );
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains(mention),
        "detail {detail:?} should mention {mention:?}"
    );
}

async fn each_kind_of_bad_input_gets_a_problem_naming_the_field_and_writes_nothing(b: Backend) {
    let env = Env::new(b).await;
    let s = env
        .serve(&["--max-event-bytes", "1000", "--max-request-bytes", "20000"])
        .await;
    assert_eq!(
        s.append("ok", &one_event("Seed", json!({"n": 1}))).await.0,
        StatusCode::CREATED
    );
    let p = "/v1/streams/s-1/events";
    let unp = StatusCode::UNPROCESSABLE_ENTITY;
    assert_problem(
        &s,
        p,
        "{\"events\": [",
        StatusCode::BAD_REQUEST,
        "not valid JSON",
    )
    .await;
    assert_problem(&s, p, "", StatusCode::BAD_REQUEST, "not valid JSON").await;
    assert_problem(&s, p, r#"{"events": [{"data": {}}]}"#, unp, "type").await;
    assert_problem(&s, p, r#"{"events": [{"type": "A"}]}"#, unp, "data").await;
    assert_problem(&s, p, r#"{"events": []}"#, unp, "events").await;
    assert_problem(&s, p, "{}", unp, "events").await;
    assert_problem(&s, p, r#"{"events": {}}"#, unp, "events").await;
    assert_problem(
        &s,
        p,
        r#"{"events": [{"type": 5, "data": {}}]}"#,
        unp,
        "events[0].type",
    )
    .await;
    assert_problem(
        &s,
        p,
        r#"{"events": [{"type": "A b", "data": {}}]}"#,
        unp,
        "events[0].type",
    )
    .await;
    assert_problem(
        &s,
        p,
        r#"{"events": [{"type": "A", "data": {}, "schema_version": "2"}]}"#,
        unp,
        "events[0].schema_version",
    )
    .await;
    assert_problem(
        &s,
        p,
        r#"{"events": [{"type": "A", "data": {}, "schema_version": 0}]}"#,
        unp,
        "schema_version",
    )
    .await;
    assert_problem(
        &s,
        p,
        r#"{"events": [{"type": "A", "data": {}, "metadata": {"k": 1}}]}"#,
        unp,
        "events[0].metadata",
    )
    .await;
    assert_problem(
        &s,
        p,
        r#"{"events": [{"type": "A", "data": {}, "colour": 1}]}"#,
        unp,
        "events[0]: unknown field",
    )
    .await;
    assert_problem(
        &s,
        p,
        r#"{"expected_version": "latest", "events": [{"type": "A", "data": {}}]}"#,
        unp,
        "expected_version",
    )
    .await;
    assert_problem(
        &s,
        p,
        r#"{"expected_version": -1, "events": [{"type": "A", "data": {}}]}"#,
        unp,
        "expected_version",
    )
    .await;
    assert_problem(
        &s,
        "/v1/streams/has%20space/events",
        r#"{"events": [{"type": "A", "data": {}}]}"#,
        StatusCode::BAD_REQUEST,
        "stream_id",
    )
    .await;
    let long_stream = format!("/v1/streams/{}/events", "x".repeat(129));
    assert_problem(
        &s,
        &long_stream,
        r#"{"events": [{"type": "A", "data": {}}]}"#,
        StatusCode::BAD_REQUEST,
        "stream_id",
    )
    .await;
    let big = json!({"events": [{"type": "A", "data": {"pad": "x".repeat(1001)}}]}).to_string();
    assert_problem(&s, p, big, StatusCode::PAYLOAD_TOO_LARGE, "events[0].data").await;
    let huge = json!({"events": [{"type": "A", "data": {"pad": "x".repeat(30_000)}}]}).to_string();
    assert_problem(&s, p, huge, StatusCode::PAYLOAD_TOO_LARGE, "20000").await;
    // One bad event in a request rejects the whole request.
    assert_problem(
        &s,
        p,
        r#"{"events": [{"type": "A", "data": {}}, {"type": "", "data": {}}]}"#,
        unp,
        "events[1].type",
    )
    .await;

    for q in [
        "/v1/events?limit=0",
        "/v1/events?limit=abc",
        "/v1/events?limit=5000",
        "/v1/events?from_seq=-1",
        "/v1/events?colour=red",
    ] {
        let (status, ct, p) = s.get(q).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {p}");
        assert_eq!(ct, "application/problem+json");
    }
    let (status, ct, _) = s.get("/v1/nothing-here").await;
    assert_eq!(
        (status, ct.as_str()),
        (StatusCode::NOT_FOUND, "application/problem+json")
    );
    let r = s.client.delete(s.url("/v1/events")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);

    let events = s.all_events().await;
    assert_eq!(events.len(), 1, "bad input must write nothing");
    let (_, _, page) = s.get("/v1/streams/s-1/events").await;
    assert_eq!(page["events"], json!([]));
    s.terminate().await;
}

async fn operations_endpoints_answer_and_openapi_lists_every_endpoint(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&[]).await;
    assert_eq!(s.get("/healthz").await.2["status"], "ok");
    assert_eq!(s.get("/readyz").await.2["status"], "ready");
    let (status, _, doc) = s.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/streams/{stream_id}/events",
        "/v1/events",
        "/v1/keys",
        "/healthz",
        "/readyz",
        "/v1/subjects/erase",
        "/v1/subjects/export",
        "/v1/checkpoints",
        "/v1/checkpoints/latest",
        "/v1/proofs/inclusion",
        "/v1/proofs/consistency",
        "/v1/audit/verify",
        "/v1/audit/verify/jobs/{job_id}",
        "/v1/export",
    ] {
        assert!(paths.contains_key(p), "openapi.json lacks {p}");
    }
    assert!(paths["/v1/streams/{stream_id}/events"]["post"]["responses"]["409"].is_object());
    s.terminate().await;
}

async fn metrics_count_commits_conflicts_and_erasures(b: Backend) {
    let env = Env::new(b).await;
    let s = env.serve(&[]).await;
    let body = json!({"expected_version": "no_stream", "events": [
        {"type": "A", "data": {"n": 1}},
        {"type": "B", "subject": "ivy@example.com", "data": {"n": 2}},
    ]});
    assert_eq!(s.append("m", &body).await.0, StatusCode::CREATED);
    assert_eq!(s.append("m", &body).await.0, StatusCode::CONFLICT);
    s.post_raw(
        "/v1/subjects/erase",
        json!({"subject": "ivy@example.com", "reason": "r", "request_ref": "x"}).to_string(),
    )
    .await;
    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = r.text().await.unwrap();
    let metric = |name: &str| {
        common::metric(&text, name)
            .unwrap_or_else(|| panic!("no integer metric {name} in:\n{text}"))
    };
    assert_eq!(metric("auditledger_events_appended_total"), 2);
    assert_eq!(metric("auditledger_version_conflicts_total"), 1);
    assert_eq!(metric("auditledger_erasures_total"), 1);
    assert_eq!(metric("auditledger_head_seq"), 1);
    assert!(
        metric("auditledger_checkpoints_total") >= 1,
        "the erasure signs a checkpoint"
    );
    assert!(!text.contains("ivy"), "no identifier in metrics");
    s.terminate().await;
}

on_both_backends!(
    metrics_count_commits_conflicts_and_erasures,
    appended_events_read_back_with_their_chain_fields,
    a_stale_expected_version_is_refused_with_409_and_writes_nothing,
    a_hundred_concurrent_appenders_make_one_dense_chain_that_verifies,
    each_kind_of_bad_input_gets_a_problem_naming_the_field_and_writes_nothing,
    operations_endpoints_answer_and_openapi_lists_every_endpoint,
);
