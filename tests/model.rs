//! A model test: random appends (with right, stale and absent expected versions), subjects,
//! erasures and restarts (graceful and SIGKILL), checked step by step against an in-memory
//! model of what the ledger must hold. Seeded, so a failure reproduces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::too_many_lines,
    reason = "test code"
)]

mod common;

use std::collections::BTreeMap;

use common::{Backend, Env};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};

const STREAMS: [&str; 4] = ["acct-a", "acct-b", "acct-c", "acct-d"];
const SUBJECTS: [&str; 3] = ["ann@example.com", "ben@example.com", "cy@example.com"];

/// One modelled event: its data, its subject identifier, its seq.
type ModelEvent = (Value, Option<&'static str>, u64);

/// What the ledger must contain: per stream, each event's data and subject identifier.
#[derive(Default)]
struct Model {
    streams: BTreeMap<&'static str, Vec<ModelEvent>>,
    /// Subjects erased (their earlier events must read as erased); a later event under the
    /// same identifier belongs to a fresh subject and stays readable.
    erased_before: Vec<(&'static str, u64)>,
    next_seq: u64,
}

async fn model_run(b: Backend) {
    let seed: u64 = std::env::var("MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_122);
    let mut rng = StdRng::seed_from_u64(seed);
    let env = Env::new(b).await;
    let mut server = env.serve(&["--checkpoint-every", "7"]).await;
    let mut model = Model::default();
    for step in 0..160 {
        match rng.gen_range(0..100) {
            0..=74 => {
                let stream = STREAMS[rng.gen_range(0..STREAMS.len())];
                let current = model.streams.get(stream).map(|v| v.len() as u64);
                // Right version, a stale one, none, or "no_stream".
                let (expected, should_pass) = match rng.gen_range(0..4) {
                    0 => (json!("any"), true),
                    1 => (json!("no_stream"), current.is_none()),
                    2 => match current {
                        Some(n) => (json!(n - 1), true),
                        None => (json!(0), false),
                    },
                    _ => (json!(current.unwrap_or(0) + 3), false),
                };
                let n = rng.gen_range(1..=3);
                let events: Vec<(Value, Option<&'static str>)> = (0..n)
                    .map(|i| {
                        let subject = rng
                            .gen_bool(0.4)
                            .then(|| SUBJECTS[rng.gen_range(0..SUBJECTS.len())]);
                        (
                            json!({"step": step, "i": i, "r": rng.r#gen::<u32>()}),
                            subject,
                        )
                    })
                    .collect();
                let body = json!({"expected_version": expected, "events": events.iter().map(|(d, s)| {
                    let mut e = json!({"type": "Changed", "data": d});
                    if let Some(s) = s { e["subject"] = json!(s); }
                    e
                }).collect::<Vec<_>>()});
                let (status, reply) = server.append(stream, &body).await;
                if should_pass {
                    assert_eq!(status, StatusCode::CREATED, "step {step}: {reply}");
                    assert_eq!(reply["first_seq"], model.next_seq, "step {step}");
                    for (d, s) in events {
                        model
                            .streams
                            .entry(stream)
                            .or_default()
                            .push((d, s, model.next_seq));
                        model.next_seq += 1;
                    }
                    assert_eq!(
                        reply["stream_version"],
                        model.streams[stream].len() as u64 - 1
                    );
                } else {
                    assert_eq!(status, StatusCode::CONFLICT, "step {step}: {reply}");
                }
            }
            75..=84 => {
                let subject = SUBJECTS[rng.gen_range(0..SUBJECTS.len())];
                let known = model.streams.values().flatten().any(|(_, s, seq)| {
                    *s == Some(subject)
                        && !model
                            .erased_before
                            .iter()
                            .any(|(e, at)| *e == subject && seq < at)
                });
                let (status, reply) = server
                    .post_raw("/v1/subjects/erase", json!({"subject": subject, "reason": "model", "request_ref": format!("r{step}")}).to_string())
                    .await;
                if known {
                    assert_eq!(status, StatusCode::OK, "step {step}: {reply}");
                    assert_eq!(reply["erasure_seq"], model.next_seq, "step {step}: {reply}");
                    model.erased_before.push((subject, model.next_seq));
                    model.next_seq += 1;
                } else {
                    // Never seen, or already erased (the first receipt comes back).
                    assert!(
                        status == StatusCode::NOT_FOUND || status == StatusCode::OK,
                        "step {step}: {reply}"
                    );
                }
            }
            85..=92 => {
                let dir_log = server.dir.join("server.log");
                let status = server.terminate().await;
                assert!(
                    status.success(),
                    "step {step}: exit {status}; log: {}",
                    std::fs::read_to_string(dir_log).unwrap_or_default()
                );
                server = env.serve(&["--checkpoint-every", "7"]).await;
            }
            _ => {
                // SIGKILL between requests: everything acknowledged must survive.
                server.kill9().await;
                server = env.serve(&["--checkpoint-every", "7"]).await;
            }
        }
    }
    // The whole ledger against the model.
    let all = server.all_events().await;
    let erasure_entries = all.iter().filter(|e| e["type"] == "SubjectErased").count() as u64;
    assert_eq!(all.len() as u64, model.next_seq);
    assert_eq!(erasure_entries, model.erased_before.len() as u64);
    for (stream, events) in &model.streams {
        let (_, _, page) = server
            .get(&format!("/v1/streams/{stream}/events?limit=1000"))
            .await;
        let got = page["events"].as_array().unwrap();
        assert_eq!(got.len(), events.len(), "stream {stream}");
        for (i, ((data, subject, seq), e)) in events.iter().zip(got).enumerate() {
            assert_eq!(e["stream_version"], i as u64);
            assert_eq!(e["seq"], *seq);
            let erased = subject.is_some_and(|s| {
                model
                    .erased_before
                    .iter()
                    .any(|(es, at)| *es == s && seq < at)
            });
            assert_eq!(e["erased"], erased, "seq {seq}");
            if erased {
                assert_eq!(e["data"], Value::Null);
            } else {
                assert_eq!(&e["data"], data, "seq {seq}");
            }
            assert_eq!(e["subject"].is_null(), subject.is_none());
        }
    }
    server.terminate().await;
    let (code, out, err) = env.cli(&["verify"]);
    assert_eq!(code, 0, "{out}{err}");
}

on_both_backends!(model_run);
