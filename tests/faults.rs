//! Exactly-once appends and a service that survives faults (issue 10):
//!
//! - an `Idempotency-Key` makes a retry return the original result and write nothing, on the
//!   same or a restarted instance, and a reused key with another body is refused;
//! - a connection lost after COMMIT (a fault-injecting TCP proxy between the service and
//!   PostgreSQL) never gets "nothing was written" for an append that was committed;
//! - a full SQLite database answers 503, `/readyz` says why, and appends resume by themselves
//!   once space is freed, with nothing acknowledged lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{Backend, Env, Server, metric, one_event, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// POSTs an append with an idempotency key; returns status, the replay header and the body.
async fn append_with_key(
    s: &Server,
    stream: &str,
    key: &str,
    body: &Value,
) -> (StatusCode, Option<String>, Value) {
    let r = s
        .client
        .post(s.url(&format!("/v1/streams/{stream}/events")))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let replayed = r
        .headers()
        .get("idempotency-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, replayed, r.json().await.unwrap_or(Value::Null))
}

async fn count_entries(env: &Env, stream: &str) -> i64 {
    env.sql_count(&format!(
        "SELECT COUNT(*) FROM entries WHERE stream_id = '{stream}'"
    ))
    .await
}

async fn idempotent_append(backend: Backend) {
    let env = Env::new(backend).await;
    let s = env.serve(&[]).await;
    let a = one_event("Paid", json!({"amount": 10}));

    let (st, replayed, first) = append_with_key(&s, "acct-1", "k-1", &a).await;
    assert_eq!(st, StatusCode::CREATED, "{first}");
    assert_eq!(replayed, None);
    let (st, replayed, again) = append_with_key(&s, "acct-1", "k-1", &a).await;
    assert_eq!(st, StatusCode::CREATED, "{again}");
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(again, first, "a retry returns the original result");
    assert_eq!(
        count_entries(&env, "acct-1").await,
        1,
        "the retry wrote nothing"
    );

    // The same key with another body, another stream or another expectation is refused.
    for (stream, body) in [
        ("acct-1", one_event("Paid", json!({"amount": 11}))),
        ("acct-1", one_event("Refunded", json!({"amount": 10}))),
        ("acct-2", a.clone()),
        (
            "acct-1",
            json!({"expected_version": 0, "events": [{"type": "Paid", "data": {"amount": 10}}]}),
        ),
    ] {
        let (st, _, problem) = append_with_key(&s, stream, "k-1", &body).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(
            problem["type"], "urn:auditledger:problem:idempotency-key-reused",
            "{problem}"
        );
    }
    assert_eq!(count_entries(&env, "acct-2").await, 0);

    // A key whose append was refused (409) is not recorded: it can be used again.
    let conflicting =
        json!({"expected_version": "no_stream", "events": [{"type": "Paid", "data": {}}]});
    let (st, _, _) = append_with_key(&s, "acct-1", "k-2", &conflicting).await;
    assert_eq!(st, StatusCode::CONFLICT);
    let exact = json!({"expected_version": 0, "events": [{"type": "Paid", "data": {"n": 2}}]});
    let (st, _, second) = append_with_key(&s, "acct-1", "k-2", &exact).await;
    assert_eq!(st, StatusCode::CREATED, "{second}");
    // Its retry gets the original answer although `expected_version: 0` no longer holds.
    let (st, replayed, again) = append_with_key(&s, "acct-1", "k-2", &exact).await;
    assert_eq!(
        (st, replayed.as_deref()),
        (StatusCode::CREATED, Some("true"))
    );
    assert_eq!(again, second);

    // Many identical requests at once: one append, every answer the same.
    let s = Arc::new(s);
    let body = json!({"events": [
        {"type": "Opened", "subject": "alice@example.com", "data": {"name": "Alice"}},
        {"type": "Noted", "data": {"big": 9_007_199_254_740_993_u64}}
    ]});
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = Arc::clone(&s);
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            append_with_key(&s, "acct-3", "k-3", &body).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        let (st, _, v) = t.await.unwrap();
        assert_eq!(st, StatusCode::CREATED, "{v}");
        answers.push(v);
    }
    assert!(answers.iter().all(|v| *v == answers[0]));
    assert_eq!(count_entries(&env, "acct-3").await, 2);

    // Keys are checked for shape, and never echoed.
    for bad in ["", &"x".repeat(256)] {
        let (st, _, problem) = append_with_key(&s, "acct-1", bad, &a).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{problem}");
    }

    // After a restart, on a fresh process, the key still holds.
    let s = Arc::into_inner(s).unwrap();
    s.terminate().await;
    let s = env.serve(&[]).await;
    let (st, replayed, again) = append_with_key(&s, "acct-1", "k-1", &a).await;
    assert_eq!(
        (st, replayed.as_deref()),
        (StatusCode::CREATED, Some("true"))
    );
    assert_eq!(again, first);
    let (st, _, again) = append_with_key(&s, "acct-3", "k-3", &body).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(again, answers[0]);

    // Once the subject is erased its data can no longer be compared; the retry still gets the
    // original result and writes nothing.
    let (st, v) = s
        .post_raw(
            "/v1/subjects/erase",
            json!({"subject": "alice@example.com", "reason": "GDPR Art. 17", "request_ref": "DSR-9"}).to_string(),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, _, again) = append_with_key(&s, "acct-3", "k-3", &body).await;
    assert_eq!(st, StatusCode::CREATED, "{again}");
    assert_eq!(again, answers[0]);
    assert_eq!(count_entries(&env, "acct-3").await, 2);
    s.terminate().await;
}

async fn idempotency_keys_expire(backend: Backend) {
    let env = Env::new(backend).await;
    // 0.0005 h = 1.8 s.
    let s = env.serve(&["--idempotency-window-hours", "0.0005"]).await;
    let a = one_event("Paid", json!({"amount": 1}));
    let (st, _, _) = append_with_key(&s, "exp-1", "k", &a).await;
    assert_eq!(st, StatusCode::CREATED);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Past the window the key is new again.
    let (st, replayed, _) = append_with_key(&s, "exp-1", "k", &a).await;
    assert_eq!((st, replayed), (StatusCode::CREATED, None));
    assert_eq!(count_entries(&env, "exp-1").await, 2);
    // And expired keys are deleted.
    wait_until(
        "expired idempotency keys are purged",
        Duration::from_secs(20),
        async || env.sql_count("SELECT COUNT(*) FROM idempotency_keys").await == 0,
    )
    .await;
    s.terminate().await;
}

/// Many keyed appends at once (committed together by group commit), each retried: every retry
/// gets its own original answer.
async fn many_keys_at_once(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Arc::new(env.serve(&[]).await);
    let send_all = async |s: &Arc<Server>| {
        let mut tasks = Vec::new();
        for i in 0..64 {
            let s = Arc::clone(s);
            tasks.push(tokio::spawn(async move {
                let body = one_event("Paid", json!({"i": i}));
                append_with_key(&s, &format!("many-{}", i % 4), &format!("key-{i}"), &body).await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            let (st, replayed, v) = t.await.unwrap();
            assert_eq!(st, StatusCode::CREATED, "{v}");
            out.push((replayed, v));
        }
        out
    };
    let first = send_all(&s).await;
    let again = send_all(&s).await;
    for ((r1, v1), (r2, v2)) in first.iter().zip(&again) {
        assert_eq!(r1, &None);
        assert_eq!(r2.as_deref(), Some("true"));
        assert_eq!(v1, v2);
    }
    assert_eq!(
        env.sql_count("SELECT COUNT(*) FROM entries WHERE stream_id LIKE 'many-%'")
            .await,
        64
    );
    assert_eq!(
        env.sql_count("SELECT COUNT(*) FROM idempotency_keys").await,
        64
    );
}

on_both_backends!(
    idempotent_append,
    idempotency_keys_expire,
    many_keys_at_once
);

/// A TCP proxy to PostgreSQL that can lose a connection around the COMMIT of the ledger's
/// append transactions (those that took the ledger's advisory lock, whose key is "auditled").
struct FaultProxy {
    port: u16,
    /// Connections to cut right after forwarding an append's COMMIT to the server.
    after_commit: Arc<AtomicU32>,
    /// Connections to cut instead of forwarding an append's COMMIT.
    before_commit: Arc<AtomicU32>,
}

const COMMIT_MESSAGE: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";
const ROLLBACK_MESSAGE: &[u8] = b"Q\0\0\0\x0dROLLBACK\0";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn last_position(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

impl FaultProxy {
    async fn start() -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let after_commit = Arc::new(AtomicU32::new(0));
        let before_commit = Arc::new(AtomicU32::new(0));
        let (after, before) = (Arc::clone(&after_commit), Arc::clone(&before_commit));
        tokio::spawn(async move {
            loop {
                let (client, _) = listener.accept().await.unwrap();
                let server = TcpStream::connect("127.0.0.1:5432").await.unwrap();
                tokio::spawn(pump(
                    client,
                    server,
                    Arc::clone(&after),
                    Arc::clone(&before),
                ));
            }
        });
        FaultProxy {
            port,
            after_commit,
            before_commit,
        }
    }

    fn url(&self, pg_url: &str) -> String {
        let name = pg_url.rsplit_once('/').unwrap().1;
        format!(
            "postgres://postgres@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        )
    }
}

/// Whether `chunk` binds the ledger's advisory-lock key: the eight bytes "auditled" as an
/// int8, not as the start of text such as "auditledger:schemas" (a read of the ledger's own
/// streams, which must not count as an append).
fn binds_lock_key(chunk: &[u8]) -> bool {
    (0..chunk.len().saturating_sub(7)).any(|i| {
        let rest = &chunk[i + 8..(i + 11).min(chunk.len())];
        &chunk[i..i + 8] == b"auditled" && (rest.is_empty() || rest != &b"ger"[..rest.len()])
    })
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

async fn pump(client: TcpStream, server: TcpStream, after: Arc<AtomicU32>, before: Arc<AtomicU32>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let downstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
    });
    let mut in_append = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        // A transaction that took the lock and rolled back (a lost commit's look-up, a stale
        // batch) is no append: the connection's next COMMIT may be anything (a projection's).
        // A dropped transaction's ROLLBACK goes out with the next query, so only what follows
        // the last ROLLBACK of a chunk counts.
        let after_rollback = last_position(chunk, ROLLBACK_MESSAGE)
            .map_or(chunk, |at| &chunk[at + ROLLBACK_MESSAGE.len()..]);
        if after_rollback.len() < chunk.len() {
            in_append = false;
        }
        if binds_lock_key(after_rollback) {
            in_append = true;
        }
        if in_append && contains(chunk, COMMIT_MESSAGE) {
            in_append = false;
            if take(&before) {
                break;
            }
            if take(&after) {
                // The client has every answer to what it sent before COMMIT; it gets none
                // from here on.
                downstream.abort();
                let _ = server_write.write_all(chunk).await;
                // Give the server time to commit, then lose the answer.
                tokio::time::sleep(Duration::from_millis(300)).await;
                break;
            }
        }
        if server_write.write_all(chunk).await.is_err() {
            break;
        }
    }
    downstream.abort();
}

/// A lost connection after COMMIT: the append was committed, and the client is told so (or,
/// if the service cannot tell, told to retry with the same key). Never "nothing was written"
/// for an append that was written, and with idempotency keys never a duplicate.
#[tokio::test]
async fn lost_commit_answers_are_true() {
    let env = Env::new(Backend::Postgres).await;
    let proxy = FaultProxy::start().await;
    let url = proxy.url(&env.pg.as_ref().unwrap().url);
    let s = Server::start_full(
        env.path(),
        &["--checkpoint-interval-secs", "3600"],
        "warn",
        Some(&url),
    )
    .await;

    let mut acknowledged = 0;
    let mut unknown = 0;
    for i in 0..12 {
        let key = format!("lost-{i}");
        let body = one_event("Paid", json!({"i": i}));
        if i % 2 == 0 {
            proxy.after_commit.store(1, Ordering::SeqCst);
        }
        let (st, _, v) = append_with_key(&s, "lost", &key, &body).await;
        match st {
            StatusCode::CREATED => acknowledged += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(
                    v["type"], "urn:auditledger:problem:append-outcome-unknown",
                    "a committed append must never be reported as not written: {v}"
                );
                unknown += 1;
                // The documented retry: the same key, the same body.
                let (st, _, v) = append_with_key(&s, "lost", &key, &body).await;
                assert_eq!(st, StatusCode::CREATED, "{v}");
                acknowledged += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(acknowledged, 12);
    assert!(
        unknown <= 2,
        "the service resolves lost commits itself ({unknown} unknown)"
    );
    // The faults did happen: six commits lost their answer, and were found committed.
    let text = s.metrics().await;
    let resolved = metric(
        &text,
        "auditledger_commit_outcomes_resolved_total{outcome=\"committed\"}",
    )
    .unwrap_or(0);
    assert_eq!(
        proxy.after_commit.load(Ordering::SeqCst),
        0,
        "the proxy never saw an append's COMMIT"
    );
    assert_eq!(resolved + unknown, 6, "{text}");
    assert_eq!(
        count_entries(&env, "lost").await,
        12,
        "no append lost, none twice"
    );

    // A connection lost before COMMIT reached the server: truly nothing was written, and the
    // client may retry.
    proxy.before_commit.store(1, Ordering::SeqCst);
    let body = one_event("Paid", json!({"i": "before"}));
    let (st, _, v) = append_with_key(&s, "lost", "before", &body).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["type"], "urn:auditledger:problem:unavailable", "{v}");
    assert_eq!(count_entries(&env, "lost").await, 12);
    let (st, _, v) = append_with_key(&s, "lost", "before", &body).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(count_entries(&env, "lost").await, 13);

    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
    s.terminate().await;
}

/// A full database (SQLite's page quota, the same error as a full disk): appends get 503 and
/// write nothing, `/readyz` says the service cannot write, and once space is freed the service
/// recovers by itself, without a restart, with every acknowledged event still there.
#[tokio::test]
async fn full_sqlite_database_recovers() {
    let env = Env::new(Backend::Sqlite).await;
    let s = env.serve(&["--sqlite-max-db-mib", "2"]).await;
    let filler = json!({"events": [{"type": "Filled", "data": {"pad": "x".repeat(2000)}}]});
    let (st, v) = s.append("before", &filler).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");

    // Another process fills the rest of the quota with a table of its own.
    env.sql(&[
        "CREATE TABLE filler (pad BLOB)",
        "INSERT INTO filler SELECT zeroblob(4000) FROM \
         (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600) SELECT i FROM n)",
    ])
    .await;

    let mut acknowledged = 1;
    let mut refused = 0;
    for i in 0..40 {
        let (st, v) = s.append("during", &filler).await;
        match st {
            StatusCode::CREATED => acknowledged += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                assert_eq!(v["type"], "urn:auditledger:problem:unavailable", "{v}");
            }
            other => panic!("append {i}: unexpected {other}: {v}"),
        }
    }
    assert!(refused > 0, "the quota was never reached");
    let (st, _, ready) = s.get("/readyz").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert!(
        ready["detail"].as_str().unwrap().contains("cannot write"),
        "{ready}"
    );
    let text = s.metrics().await;
    assert!(text.contains("auditledger_write_failures_total"), "{text}");

    // Space comes back; the service finds out by itself.
    env.sql(&["DELETE FROM filler"]).await;
    wait_until("ready again", Duration::from_secs(20), async || {
        s.get("/readyz").await.0 == StatusCode::OK
    })
    .await;
    for _ in 0..10 {
        let (st, v) = s.append("after", &filler).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        acknowledged += 1;
    }
    let total = env
        .sql_count("SELECT COUNT(*) FROM entries WHERE stream_id IN ('before', 'during', 'after')")
        .await;
    assert_eq!(
        total, acknowledged,
        "every acknowledged event, nothing else"
    );
    s.terminate().await;
    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}
