//! Access control (issue 11): every endpoint against every role, revocation across instances,
//! access entries for exactly the audited requests, legal holds against erasure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(
    clippy::too_many_lines,
    reason = "each test tells one story, end to end"
)]

mod common;

use std::time::Duration;

use common::{Backend, Env, Server};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ROLES: [&str; 5] = ["writer", "reader", "auditor", "privacy_officer", "admin"];

/// Every `/v1` endpoint, with the roles that may use it (as issue 11 states them, written
/// out here independently of the service's own table).
fn matrix() -> Vec<(Method, &'static str, Option<Value>, &'static [&'static str])> {
    let erase = json!({"subject": "nobody@example.com", "reason": "r", "request_ref": "x"});
    let hold = json!({"subject": "nobody@example.com", "reference": "C-1", "reason": "r"});
    vec![
        (
            Method::POST,
            "/v1/streams/billing-1/events",
            Some(json!({"events": [{"type": "T", "data": {}}]})),
            &["writer"],
        ),
        (
            Method::GET,
            "/v1/streams/billing-1/events",
            None,
            &["reader"],
        ),
        (
            Method::PUT,
            "/v1/streams/billing-1/snapshots",
            Some(json!({"stream_version": 0, "state": {}})),
            &["writer"],
        ),
        (Method::GET, "/v1/streams/billing-1/load", None, &["reader"]),
        (Method::GET, "/v1/events", None, &["reader"]),
        (Method::GET, "/v1/subscribe", None, &["reader"]),
        (Method::GET, "/v1/streams", None, &["reader", "auditor"]),
        (
            Method::GET,
            "/v1/stats/events",
            None,
            &["reader", "auditor"],
        ),
        (
            Method::PUT,
            "/v1/subscriptions/matrix",
            Some(json!({})),
            &["reader"],
        ),
        (Method::GET, "/v1/subscriptions/matrix", None, &["reader"]),
        (
            Method::POST,
            "/v1/subscriptions/matrix/poll",
            None,
            &["reader"],
        ),
        (
            Method::POST,
            "/v1/subscriptions/matrix/ack",
            Some(json!({"lease_id": "nope"})),
            &["reader"],
        ),
        (
            Method::POST,
            "/v1/subjects/erase",
            Some(erase),
            &["privacy_officer"],
        ),
        (
            Method::POST,
            "/v1/subjects/export",
            Some(json!({"subject": "nobody@example.com"})),
            &["privacy_officer"],
        ),
        (
            Method::POST,
            "/v1/subjects/hold",
            Some(hold.clone()),
            &["privacy_officer"],
        ),
        (
            Method::POST,
            "/v1/subjects/release",
            Some(hold),
            &["privacy_officer"],
        ),
        (
            Method::GET,
            "/v1/subjects/erasures?request_ref=x",
            None,
            &["auditor", "privacy_officer"],
        ),
        (
            Method::GET,
            "/v1/subjects/erasures/0",
            None,
            &["auditor", "privacy_officer"],
        ),
        (Method::GET, "/v1/keys", None, &["auditor", "admin"]),
        (Method::POST, "/v1/keys/rotate", None, &["admin"]),
        (Method::GET, "/v1/checkpoints", None, &["auditor"]),
        (Method::GET, "/v1/checkpoints/latest", None, &["auditor"]),
        (Method::POST, "/v1/checkpoints", None, &["auditor"]),
        (
            Method::GET,
            "/v1/proofs/inclusion?seq=0",
            None,
            &["auditor"],
        ),
        (
            Method::GET,
            "/v1/proofs/consistency?from_size=1&to_size=1",
            None,
            &["auditor"],
        ),
        (Method::GET, "/v1/audit/verify", None, &["auditor"]),
        (
            Method::GET,
            "/v1/audit/verify/jobs/nope",
            None,
            &["auditor"],
        ),
        (Method::GET, "/v1/export", None, &["auditor"]),
        (
            Method::GET,
            "/v1/audit/reports/activity",
            None,
            &["auditor", "privacy_officer"],
        ),
        (
            Method::GET,
            "/v1/audit/reports/signed/0000000000000000000000000000000000000000000000000000000000000000",
            None,
            &["auditor", "privacy_officer"],
        ),
        (Method::GET, "/v1/tokens", None, &["admin"]),
        (
            Method::POST,
            "/v1/tokens",
            Some(json!({"roles": ["reader"], "name": "made-by-matrix"})),
            &["admin"],
        ),
        (
            Method::POST,
            "/v1/tokens/0123456789abcdef/revoke",
            None,
            &["admin"],
        ),
        (
            Method::GET,
            "/v1/policies",
            None,
            &["admin", "auditor", "privacy_officer"],
        ),
        (
            Method::PUT,
            "/v1/schemas/T",
            Some(json!({"versions": [{"version": 1}]})),
            &["admin"],
        ),
        (
            Method::GET,
            "/v1/schemas/T",
            None,
            &["admin", "writer", "reader", "auditor"],
        ),
        (
            Method::PUT,
            "/v1/policies/T",
            Some(json!({"retention_days": 365, "purpose": "testing"})),
            &["admin"],
        ),
    ]
}

async fn call(
    s: &Server,
    token: Option<&str>,
    method: &Method,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Option<String>, Value) {
    let client = common::client_with(token);
    let mut req = client.request(method.clone(), s.url(path));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    // A subscription's body never ends: its status is the answer.
    if r.headers()
        .get("content-type")
        .is_some_and(|v| v == "text/event-stream")
    {
        return (status, www, Value::Null);
    }
    (status, www, r.json().await.unwrap_or(Value::Null))
}

async fn the_allow_deny_matrix_holds_for_every_endpoint_and_role(backend: Backend) {
    let env = Env::new(backend).await;
    let s = env.serve(&["--auth"]).await;
    let tokens: Vec<(&str, String)> = ROLES
        .iter()
        .map(|r| (*r, env.token(r, &["--name", r])))
        .collect();
    let (status, _) = s
        .append(
            "billing-1",
            &json!({"events": [{"type": "T", "subject": "sam@example.com", "data": {"a": 1}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let revoked = env.token("reader,auditor", &[]);
    let revoked_id = revoked.split('_').nth(1).unwrap().to_owned();
    let (code, _, _) = env.cli(&["token", "revoke", &revoked_id]);
    assert_eq!(code, 0);
    let expired = env.token("reader,auditor", &["--expires", "1s"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The right id with another secret.
    let good = &tokens[1].1;
    let last = if good.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &good[..good.len() - 1]);

    let mut checked = 0;
    for (method, path, body, allowed) in matrix() {
        // No token, a revoked, an expired, a forged or a malformed one: one and the same 401.
        let mut first_401 = None;
        for bad in [
            None,
            Some(revoked.as_str()),
            Some(expired.as_str()),
            Some(forged.as_str()),
            Some("alt1_nonsense"),
        ] {
            let (status, www, problem) = call(&s, bad, &method, path, body.as_ref()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {bad:?}"
            );
            assert_eq!(www.as_deref(), Some("Bearer realm=\"auditledger\""));
            assert_eq!(problem["type"], "urn:auditledger:problem:unauthorized");
            match &first_401 {
                None => first_401 = Some(problem),
                Some(p) => assert_eq!(p, &problem, "every invalid token gets the same answer"),
            }
        }
        for (role, token) in &tokens {
            let (status, _, problem) = call(&s, Some(token), &method, path, body.as_ref()).await;
            if allowed.contains(role) {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{role} may {method} {path}, got {status} {problem}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{role} may not {method} {path}: {problem}"
                );
                assert_eq!(problem["type"], "urn:auditledger:problem:forbidden");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, matrix().len() * ROLES.len());

    // /healthz, /readyz, /metrics and /openapi.json need no token.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let (status, _, _) = call(&s, None, &Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    // An unknown /v1 route: 401 without a token, 404 with one.
    let (status, _, _) = call(&s, None, &Method::GET, "/v1/nothing", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(&s, Some(&tokens[0].1), &Method::GET, "/v1/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A token limited to stream prefixes touches only those streams, and nothing ledger-wide.
    let scoped = env.token("writer,reader", &["--streams", "billing-"]);
    let ev = json!({"events": [{"type": "T", "data": {}}]});
    let (status, _, _) = call(
        &s,
        Some(&scoped),
        &Method::POST,
        "/v1/streams/billing-9/events",
        Some(&ev),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = call(
        &s,
        Some(&scoped),
        &Method::POST,
        "/v1/streams/hr-9/events",
        Some(&ev),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = call(
        &s,
        Some(&scoped),
        &Method::GET,
        "/v1/streams/hr-9/events",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = call(
        &s,
        Some(&scoped),
        &Method::GET,
        "/v1/streams/billing-9/events",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&s, Some(&scoped), &Method::GET, "/v1/events", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Refusals are counted; no token's secret reaches the log.
    let (_, _, _) = call(&s, None, &Method::GET, "/healthz", None).await;
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("auditledger_auth_refusals_total{status=\"401\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("auditledger_auth_refusals_total{status=\"403\""),
        "{metrics}"
    );
    let log = std::fs::read_to_string(env.path().join("server.log")).unwrap();
    assert!(log.contains("request refused by access control"), "{log}");
    for (_, t) in &tokens {
        let secret = t.rsplit('_').next().unwrap();
        assert!(!log.contains(secret), "a token's secret is in the log");
    }
    assert!(!log.contains(revoked.rsplit('_').next().unwrap()));
    let stored = std::fs::read(env.path().join("data/ledger.db")).unwrap_or_default();
    for (_, t) in &tokens {
        let secret = t.rsplit('_').next().unwrap();
        assert!(
            !stored.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a token is stored in clear"
        );
    }
}

async fn each_audited_request_appends_one_access_entry_and_no_other_does(backend: Backend) {
    let env = Env::new(backend).await;
    let s = env.serve(&["--auth"]).await;
    let reader = env.token("reader", &[]);
    let officer = env.token("privacy_officer", &[]);
    let auditor = env.token("auditor", &[]);
    let admin = env.token("admin", &[]);
    let id = |t: &str| t.split('_').nth(1).unwrap().to_owned();
    // The service records the CLI's token creations within a second.
    common::wait_until(
        "token creations recorded",
        Duration::from_secs(10),
        async || {
            env.access_entries()
                .await
                .iter()
                .filter(|m| m["action"] == "create_token")
                .count()
                >= 5
        },
    )
    .await;
    let seen = std::cell::Cell::new(env.access_entries().await.len());
    let expect = async |what: &str, n: usize| -> Vec<Value> {
        let all = env.access_entries().await;
        assert_eq!(
            all.len(),
            seen.get() + n,
            "{what}: {n} new access entries expected"
        );
        let new = all[seen.get()..].to_vec();
        seen.set(all.len());
        new
    };

    let subject_events = json!({"events": [
        {"type": "Opened", "subject": "ana@example.com", "data": {"name": "Ana"}},
        {"type": "Opened", "subject": "ben@example.com", "data": {"name": "Ben"}},
        {"type": "Noted", "data": {"n": 1}},
    ]});
    assert_eq!(
        s.append("acct-1", &subject_events).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        s.append(
            "plain-1",
            &json!({"events": [{"type": "Noted", "data": {}}]})
        )
        .await
        .0,
        StatusCode::CREATED
    );
    expect("appends", 0).await;

    let get = async |token: &str, path: &str| call(&s, Some(token), &Method::GET, path, None).await;
    let post = async |token: &str, path: &str, body: Value| {
        call(&s, Some(token), &Method::POST, path, Some(&body)).await
    };
    assert_eq!(
        get(&reader, "/v1/streams/plain-1/events").await.0,
        StatusCode::OK
    );
    expect("a read that decrypts no personal data", 0).await;

    assert_eq!(
        get(&reader, "/v1/streams/acct-1/events").await.0,
        StatusCode::OK
    );
    let e = expect("a stream read", 1).await;
    assert_eq!(e[0]["action"], "read_stream");
    assert_eq!(e[0]["token_id"], id(&reader));
    assert_eq!(e[0]["role"], "reader");
    assert_eq!(e[0]["stream"], "acct-1");
    assert_eq!(e[0]["events"], "2");
    assert_eq!(e[0]["subjects"], "2");
    assert_eq!(e[0]["outcome"], "ok");

    assert_eq!(
        get(&reader, "/v1/events?limit=1000").await.0,
        StatusCode::OK
    );
    let e = expect("a log read", 1).await;
    assert_eq!(
        (e[0]["action"].as_str(), e[0]["events"].as_str()),
        (Some("read_log"), Some("2"))
    );

    let (status, _, body) = post(
        &officer,
        "/v1/subjects/export",
        json!({"subject": "ana@example.com"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let e = expect("a subject export", 1).await;
    assert_eq!(e[0]["action"], "export_subject");
    assert_eq!(e[0]["subject_handle"], body["subject_handle"]);
    assert_eq!(e[0]["role"], "privacy_officer");
    assert_eq!(
        post(
            &officer,
            "/v1/subjects/export",
            json!({"subject": "nobody@example.com"})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        expect("an export of nobody", 1).await[0]["outcome"],
        "not_found"
    );

    for path in [
        "/v1/audit/verify",
        "/v1/audit/reports/access",
        "/v1/checkpoints/latest",
        "/v1/keys",
        "/v1/export",
        "/v1/policies",
    ] {
        assert_eq!(get(&auditor, path).await.0, StatusCode::OK, "{path}");
    }
    expect("auditor requests", 0).await;
    assert_eq!(get(&auditor, "/v1/events").await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        call(&s, None, &Method::GET, "/v1/events", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    expect("refused requests", 0).await;

    // A hold blocks the erasure (409 naming the hold); its release lets it through.
    let (status, _, hold) = post(
        &officer,
        "/v1/subjects/hold",
        json!({"subject": "ana@example.com", "reference": "LIT-2026-7", "reason": "GDPR Art. 17(3)(e)"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{hold}");
    assert_eq!(expect("a hold", 1).await[0]["action"], "place_hold");
    let erase = json!({"subject": "ana@example.com", "reason": "GDPR Art. 17(1)(a)", "request_ref": "DSR-9"});
    let (status, _, problem) = post(&officer, "/v1/subjects/erase", erase.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(
        problem["type"],
        "urn:auditledger:problem:subject-under-legal-hold"
    );
    assert_eq!(problem["hold_reference"], "LIT-2026-7");
    assert_eq!(problem["hold_seq"], hold["hold_seq"]);
    let e = expect("a refused erasure", 1).await;
    assert_eq!(
        (e[0]["action"].as_str(), e[0]["outcome"].as_str()),
        (Some("erase_subject"), Some("refused"))
    );
    // The subject is intact: still exported.
    assert_eq!(
        post(
            &officer,
            "/v1/subjects/export",
            json!({"subject": "ana@example.com"})
        )
        .await
        .0,
        StatusCode::OK
    );
    expect("export", 1).await;
    let (status, _, again) = post(
        &officer,
        "/v1/subjects/hold",
        json!({"subject": "ana@example.com", "reference": "LIT-2", "reason": "r"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    expect("a second hold, refused", 1).await;
    let (status, _, released) = post(
        &officer,
        "/v1/subjects/release",
        json!({"subject": "ana@example.com", "reason": "case closed"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    assert_eq!(released["hold_seq"], hold["hold_seq"]);
    assert_eq!(expect("a release", 1).await[0]["action"], "release_hold");
    let (status, _, receipt) = post(&officer, "/v1/subjects/erase", erase).await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    // The erasure's own entry is its access record: it names the token and role.
    expect("an erasure (its SubjectErased entry records it)", 0).await;
    let erased_by = env
        .sql_count(&format!(
            "SELECT COUNT(*) FROM entries WHERE seq = {} AND event_type = 'SubjectErased' \
             AND metadata LIKE '%\"token_id\":\"{}\"%' AND metadata LIKE '%privacy_officer%'",
            receipt["erasure_seq"],
            id(&officer)
        ))
        .await;
    assert_eq!(erased_by, 1);

    // Token changes through the API, and through the CLI beside the service.
    let (status, _, made) = post(
        &admin,
        "/v1/tokens",
        json!({"roles": ["writer"], "name": "w"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let e = expect("a token creation", 1).await;
    assert_eq!(
        (e[0]["action"].as_str(), e[0]["target"].as_str()),
        (Some("create_token"), made["id"].as_str())
    );
    assert_eq!(e[0]["token_id"], id(&admin));
    let path = format!("/v1/tokens/{}/revoke", made["id"].as_str().unwrap());
    assert_eq!(
        call(&s, Some(&admin), &Method::POST, &path, None).await.0,
        StatusCode::OK
    );
    assert_eq!(expect("a revocation", 1).await[0]["action"], "revoke_token");
    let by_cli = env.token("reader", &[]);
    common::wait_until(
        "the CLI's token recorded",
        Duration::from_secs(10),
        async || env.access_entries().await.len() == seen.get() + 1,
    )
    .await;
    let e = expect("a token made with the CLI", 1).await;
    assert_eq!(
        (e[0]["token_id"].as_str(), e[0]["target"].as_str()),
        (Some("cli"), Some(id(&by_cli).as_str()))
    );

    let (status, _, rotated) = call(&s, Some(&admin), &Method::POST, "/v1/keys/rotate", None).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let e = expect("a key rotation", 1).await;
    assert_eq!(
        (e[0]["action"].as_str(), e[0]["target"].as_str()),
        (Some("rotate_signing_key"), rotated["key_id"].as_str())
    );

    // Access entries are the ledger's own: a client cannot write one, and the chain verifies.
    let (status, problem) = s
        .append(
            "auditledger:access",
            &json!({"events": [{"type": "AccessRecorded", "data": {}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let (_, _, report) = get(&auditor, "/v1/audit/verify").await;
    assert_eq!(report["ok"], true, "{report}");
    // No access entry holds an identifier.
    for m in env.access_entries().await {
        let text = m.to_string();
        assert!(!text.contains("ana@") && !text.contains("ben@"), "{text}");
    }
}

on_both_backends!(
    the_allow_deny_matrix_holds_for_every_endpoint_and_role,
    each_audited_request_appends_one_access_entry_and_no_other_does,
);

/// Two instances on one database: a token revoked through one is refused by the other on its
/// very next request (nothing is cached).
#[tokio::test]
async fn a_revoked_token_fails_at_once_on_a_second_instance() {
    let env = Env::new(Backend::Postgres).await;
    let a = env.serve(&["--auth"]).await;
    let second_dir = common::workdir();
    common::copy_keys(&env.path().join("keys"), &second_dir.path().join("keys"));
    let b = env.serve_in(second_dir.path(), &["--auth"]).await;
    let reader = env.token("reader", &[]);
    let reader_id = reader.split('_').nth(1).unwrap().to_owned();
    for s in [&a, &b] {
        assert_eq!(
            call(s, Some(&reader), &Method::GET, "/v1/events", None)
                .await
                .0,
            StatusCode::OK
        );
    }
    let path = format!("/v1/tokens/{reader_id}/revoke");
    let (status, _, view) = call(&a, a.token.as_deref(), &Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["status"], "revoked");
    assert_eq!(
        call(&b, Some(&reader), &Method::GET, "/v1/events", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&a, Some(&reader), &Method::GET, "/v1/events", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

/// `token revoke` beside a running SQLite service takes effect at the next request.
#[tokio::test]
async fn a_token_revoked_with_the_cli_beside_the_service_fails_at_once() {
    let env = Env::new(Backend::Sqlite).await;
    let s = env.serve(&["--auth"]).await;
    let reader = env.token("reader", &["--name", "to-revoke"]);
    assert_eq!(
        call(&s, Some(&reader), &Method::GET, "/v1/events", None)
            .await
            .0,
        StatusCode::OK
    );
    let (_, list, _) = env.cli(&["token", "list"]);
    assert!(
        list.contains("to-revoke") && list.contains("active"),
        "{list}"
    );
    assert!(
        !list.contains(reader.rsplit('_').next().unwrap()),
        "a list never shows a secret"
    );
    let id = reader.split('_').nth(1).unwrap();
    let (code, out, _) = env.cli(&["token", "revoke", id]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        call(&s, Some(&reader), &Method::GET, "/v1/events", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (code, _, err) = env.cli(&["token", "revoke", id]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = env.cli(&["token", "create", "--role", "root"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown role"), "{err}");
}

/// Without a token nothing is served, and the first start says how to make the first one;
/// `--insecure-no-auth` warns at every start.
#[tokio::test]
async fn there_is_no_open_mode_unless_asked_for() {
    let dir = common::workdir();
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--insecure-no-auth"));
    let s = Server::start_full(dir.path(), &["--auth"], "info", None).await;
    assert_eq!(
        call(&s, None, &Method::GET, "/v1/events", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    s.terminate().await;
    let s = Server::start_full(dir.path(), &[], "warn", None).await;
    assert_eq!(
        call(&s, None, &Method::GET, "/v1/events", None).await.0,
        StatusCode::OK
    );
    s.terminate().await;
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(log.contains("--insecure-no-auth"), "{log}");
    // A fresh ledger without tokens prints how to make the first admin token.
    let fresh = common::workdir();
    let mut child = std::process::Command::new(common::BIN)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .current_dir(fresh.path())
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    while !out.contains("listening") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut reader, &mut line).unwrap() == 0 {
            break;
        }
        out.push_str(&line);
    }
    assert!(
        out.contains("auditledger token create --role admin"),
        "{out}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
