//! Live readers' access entries, written by the writer with the events (`ledger::live`; written
//! by a reviewer attacking that change): every event with personal data a subscriber is sent is
//! covered by an access entry of its own token (`read_log`, its seq within `from_seq..to_seq`,
//! its subject's handle listed), whatever batches, filters, reconnections, erasures and
//! instances it meets; and the writer stops recording for a subscriber stuck far behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::too_many_lines, reason = "test code")]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::sse::{Message, Subscriber};
use common::{Backend, Env, Server};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A subscriber of the stress run: its token, query, when it opens, and whether it drops and
/// resumes (with `Last-Event-ID`) every so many messages.
struct Plan {
    query: &'static str,
    open_after_ms: u64,
    reconnect_every: Option<usize>,
}

/// Reads until `done` is set and nothing has come for 3 s; resumes after every
/// `reconnect_every` messages.
async fn subscribe_until_quiet(
    s: Arc<Server>,
    client: reqwest::Client,
    plan: Plan,
    done: Arc<AtomicBool>,
) -> Vec<Message> {
    tokio::time::sleep(Duration::from_millis(plan.open_after_ms)).await;
    let mut got: Vec<Message> = Vec::new();
    let mut sse = Subscriber::open_with(&s, &client, plan.query, None).await;
    let mut since_open = 0;
    let mut quiet_since = Instant::now();
    loop {
        match sse.try_next(Duration::from_millis(500)).await {
            Ok(Some(m)) => {
                quiet_since = Instant::now();
                assert!(m.event != "lagged", "a subscriber lagged: {m:?}");
                got.push(m);
                since_open += 1;
                if plan.reconnect_every.is_some_and(|n| since_open >= n) {
                    let last = got.iter().rev().find_map(|m| m.id);
                    drop(sse);
                    sse = Subscriber::open_with(&s, &client, plan.query, last).await;
                    since_open = 0;
                }
            }
            Ok(None) => panic!("a subscription ended"),
            Err(()) => {
                if done.load(Ordering::SeqCst) && quiet_since.elapsed() > Duration::from_secs(3) {
                    return got;
                }
            }
        }
    }
}

/// The token id of `token`: it reads a stream of its own, whose access entry names it.
async fn token_id(s: &Server, token: &str, probe: &str) -> String {
    let client = common::client_with(Some(token));
    let r = client
        .get(s.url(&format!("/v1/streams/{probe}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let entries = s.all_entries().await;
    entries
        .iter()
        .filter(|e| e["stream_id"] == "auditledger:access")
        .find(|e| e["metadata"]["stream"] == probe)
        .map_or_else(
            || panic!("no access entry for the read of {probe}"),
            |e| e["metadata"]["token_id"].as_str().unwrap().to_owned(),
        )
}

/// A `read_log` access entry: token id, from_seq, to_seq, handles, its own seq.
type ReadLog = (String, u64, u64, BTreeSet<String>, u64);

/// Every `read_log` access entry.
fn read_log_entries(entries: &[Value]) -> Vec<ReadLog> {
    entries
        .iter()
        .filter(|e| e["stream_id"] == "auditledger:access" && e["metadata"]["action"] == "read_log")
        .filter_map(|e| {
            let m = &e["metadata"];
            let from = m["from_seq"].as_str()?.parse().ok()?;
            let to = m["to_seq"].as_str()?.parse().ok()?;
            let handles = e["data"]["subject_handles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap().to_owned())
                .collect();
            Some((
                m["token_id"].as_str().unwrap().to_owned(),
                from,
                to,
                handles,
                e["seq"].as_u64().unwrap(),
            ))
        })
        .collect()
}

async fn appender(s: Arc<Server>, w: usize, rounds: usize) {
    let subjects = [
        "ann@example.com",
        "bob@example.com",
        "erase-me@example.com",
        "cid@example.com",
    ];
    for i in 0..rounds {
        let n = 1 + (i + w) % 3;
        let events: Vec<Value> = (0..n)
            .map(|k| {
                let ty = if (i + k) % 2 == 0 {
                    "Deposited"
                } else {
                    "Noted"
                };
                if (i + k + w) % 5 == 4 {
                    json!({"type": ty, "data": {"w": w, "i": i, "k": k}})
                } else {
                    let subject = subjects[(i * 7 + k + w) % subjects.len()];
                    json!({"type": ty, "subject": subject, "data": {"w": w, "i": i, "k": k}})
                }
            })
            .collect();
        let stream = if i % 4 == 3 {
            format!("other-{w}")
        } else {
            format!("acct-{w}")
        };
        let (status, body) = s.append(&stream, &json!({ "events": events })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

/// Appenders on every server, subscribers (each with a token of its own, filters, late
/// openings, reconnections) on every server, an erasure half way: then every event with data
/// of a subject that any subscriber received must be covered by an access entry of its token.
async fn every_delivery_is_covered(servers: Vec<Arc<Server>>, env: &Env) {
    let plans = || {
        vec![
            Plan {
                query: "",
                open_after_ms: 0,
                reconnect_every: None,
            },
            Plan {
                query: "?stream_prefix=acct-",
                open_after_ms: 150,
                reconnect_every: None,
            },
            Plan {
                query: "?type=Deposited",
                open_after_ms: 300,
                reconnect_every: None,
            },
            Plan {
                query: "?stream_prefix=other-",
                open_after_ms: 450,
                reconnect_every: Some(7),
            },
            Plan {
                query: "",
                open_after_ms: 100,
                reconnect_every: Some(25),
            },
            Plan {
                query: "?from_seq=0",
                open_after_ms: 900,
                reconnect_every: None,
            },
        ]
    };
    // Something for every probe read to find.
    let s0 = &servers[0];
    let mut subscribers = Vec::new();
    for (si, s) in servers.iter().enumerate() {
        for (pi, plan) in plans().into_iter().enumerate() {
            let probe = format!("probe-{si}-{pi}");
            let (status, body) = s0
                .append(
                    &probe,
                    &json!({"events": [{"type": "P", "subject": "probe@example.com", "data": {}}]}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let token = env.token("reader", &[]);
            let id = token_id(s, &token, &probe).await;
            assert_ne!(id, "anonymous");
            subscribers.push((Arc::clone(s), token, id, plan));
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for (s, token, id, plan) in subscribers {
        let client = common::client_with(Some(&token));
        let query = plan.query;
        readers.push((
            id,
            query,
            tokio::spawn(subscribe_until_quiet(s, client, plan, Arc::clone(&done))),
        ));
    }
    let mut writers = Vec::new();
    for w in 0..8 {
        let s = Arc::clone(&servers[w % servers.len()]);
        writers.push(tokio::spawn(appender(s, w, 60)));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, body) = s0
        .post_raw(
            "/v1/subjects/erase",
            json!({"subject": "erase-me@example.com", "reason": "Art. 17", "request_ref": "R-1"})
                .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let mut received = Vec::new();
    for (id, query, r) in readers {
        received.push((id, query, r.await.unwrap()));
    }
    let entries = s0.all_entries().await;
    let reads = read_log_entries(&entries);
    let mut by_token: HashMap<&str, Vec<&ReadLog>> = HashMap::new();
    for r in &reads {
        by_token.entry(r.0.as_str()).or_default().push(r);
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for (id, query, got) in &received {
        for m in got.iter().filter(|m| m.event == "event") {
            let Some(handle) = m.data["subject"].as_str() else {
                continue;
            };
            if m.data["erased"] == true {
                continue;
            }
            checked += 1;
            let seq = m.id.unwrap();
            let covered = by_token.get(id.as_str()).is_some_and(|rs| {
                rs.iter().any(|(_, from, to, handles, _)| {
                    *from <= seq && seq <= *to && handles.contains(handle)
                })
            });
            if !covered {
                failures.push(format!(
                    "token {id} ({query:?}) was sent seq {seq} ({} {}) of subject {handle} with no access entry covering it",
                    m.data["stream_id"], m.data["type"]
                ));
            }
        }
    }
    println!("checked {checked} deliveries of personal data");
    assert!(checked > 100, "too few deliveries checked: {checked}");
    assert!(
        failures.is_empty(),
        "{} deliveries unrecorded, e.g. {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
}

#[tokio::test]
async fn every_live_delivery_is_covered_on_sqlite() {
    let env = Env::new(Backend::Sqlite).await;
    let s = Arc::new(env.serve(&["--auth"]).await);
    every_delivery_is_covered(vec![Arc::clone(&s)], &env).await;
    Arc::try_unwrap(s).ok().unwrap().terminate().await;
}

#[tokio::test]
async fn every_live_delivery_is_covered_on_two_postgres_instances() {
    let env = Env::new(Backend::Postgres).await;
    let a = Arc::new(env.serve(&["--auth"]).await);
    let second_dir = common::workdir();
    common::copy_keys(&env.path().join("keys"), &second_dir.path().join("keys"));
    let b = Arc::new(env.serve_in(second_dir.path(), &["--auth"]).await);
    every_delivery_is_covered(vec![Arc::clone(&a), Arc::clone(&b)], &env).await;
    Arc::try_unwrap(a).ok().unwrap().terminate().await;
    Arc::try_unwrap(b).ok().unwrap().terminate().await;
}

/// `ledger::live::MAX_BEHIND`: the writer records for a subscriber only batches within 16,384
/// entries of where it goes on from. A subscriber that catches up from far back and then reads
/// nothing more is recorded for the batches near its position (which it would be sent next, as
/// the writer cannot know it stalled), and for none further on.
#[tokio::test]
async fn a_reader_far_behind_is_not_recorded_for_by_the_writer() {
    const MAX_BEHIND: u64 = 16_384;
    let env = Env::new(Backend::Sqlite).await;
    let s = env
        .serve(&[
            "--auth",
            "--subscriber-buffer",
            "1",
            "--slow-subscriber-secs",
            "600",
        ])
        .await;
    // 24 MB of history: far more than the socket buffers between server and client hold.
    let pad = "x".repeat(4000);
    for _ in 0..12 {
        let batch: Vec<Value> = (0..500)
            .map(|i| json!({"type": "Old", "subject": "old@example.com", "data": {"i": i, "pad": pad}}))
            .collect();
        let (status, body) = s.append("acct-old", &json!({ "events": batch })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let token = env.token("reader", &[]);
    let (status, body) = s
        .append(
            "probe-far",
            &json!({"events": [{"type": "P", "subject": "probe@example.com", "data": {}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = token_id(&s, &token, "probe-far").await;
    assert_ne!(id, "anonymous");
    let client = common::client_with(Some(&token));
    // Catching up from the start, then reading nothing more: it stays behind the head.
    let mut sub = Subscriber::open_with(&s, &client, "?stream_prefix=acct-&from_seq=0", None).await;
    let first = sub
        .try_next(Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.data["stream_id"], "acct-old");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // 40 batches of 500 events with personal data: 20,000 entries past the stalled reader.
    let mut batches = Vec::new();
    for i in 0..40 {
        let events: Vec<Value> = (0..500)
            .map(|j| json!({"type": "New", "subject": "new@example.com", "data": {"i": i, "j": j}}))
            .collect();
        let (status, body) = s.append("acct-live", &json!({ "events": events })).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        batches.push(body["entries"][0]["seq"].as_u64().unwrap());
    }
    let entries = s.all_entries().await;
    let reads: Vec<_> = read_log_entries(&entries)
        .into_iter()
        .filter(|(t, ..)| *t == id)
        .collect();
    // The writer's entries follow the events they record, in their batch; the subscriber's own
    // come in batches of their own.
    let writers: Vec<u64> = reads
        .iter()
        .filter(|(_, from, to, _, seq)| *from >= batches[0] && *seq == *to + 1)
        .map(|(_, from, ..)| *from)
        .collect();
    let own_reach = reads
        .iter()
        .filter(|(_, _, to, _, seq)| *seq != *to + 1)
        .map(|(_, _, to, ..)| *to)
        .max()
        .unwrap();
    println!(
        "the stalled reader's own pages reach seq {own_reach}; the writer recorded for it the \
         batches from {writers:?}; batches start at {batches:?}"
    );
    // Its position is at most a page and a page read ahead past what it recorded itself.
    let bound = own_reach + 1 + 2000 + MAX_BEHIND;
    assert!(
        writers.iter().all(|&from| from <= bound),
        "recorded batches beyond seq {bound}: {writers:?}"
    );
    assert!(
        batches.iter().any(|&b| b > bound),
        "the test appended too little to pass the bound {bound}"
    );
    drop(sub);
    s.terminate().await;
}
