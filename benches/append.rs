//! Append benchmark: `cargo bench --bench append`.
//!
//! 1. Cost per event of each stage of the append pipeline (seal, hash, sign, insert+commit),
//!    measured in isolation on one core.
//! 2. End to end over HTTP: the service (release build, embedded SQLite, durable commits) on a
//!    runtime of its own, driven by a client runtime in the same process, for 1-event and
//!    100-event requests at several concurrency levels: events/s and p50/p99 request latency,
//!    plus the writer's own per-stage time under that load.
//!
//! `BENCH_SECONDS` sets the length of each end-to-end cell (default 5); `BENCH_EVENT=1k` sends
//! the ~1 KB events of benches/throughput.sh (a subject each) instead of 64-byte ones.
//! `BENCH_POSTGRES=postgres://…/admin_db` runs the service on PostgreSQL instead, in a database
//! the benchmark creates and drops; `BENCH_INSTANCES=2` starts two service instances on it
//! (sharing keys) and spreads the clients over both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_lines
)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use auditledger::cli::Service;
use auditledger::config::ServeConfig;
use auditledger::store::{SqliteStore, Store};
use serde_json::json;

#[allow(
    dead_code,
    reason = "shared with benches/limits.rs, which uses all of it"
)]
mod stages;

const STAGE_EVENTS: usize = 20_000;

fn per_event(d: Duration, n: usize) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6 / n as f64)
}

async fn stages() {
    let keys = stages::Keys::generate();
    let data = serde_json::to_vec(
        &json!({"amount": 1250, "currency": "EUR", "iban": "DE89370400440532013000"}),
    )
    .unwrap();
    let headers = (0..STAGE_EVENTS as u64)
        .map(|i| stages::header(i, false))
        .collect();
    let (times, records) = stages::run(&keys, headers, &data);
    let (seal_t, hash_t, sign_t) = (times.seal, times.hash, times.sign);
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("ledger.db"), None)
        .await
        .unwrap();
    let t = Instant::now();
    for chunk in records.chunks(1000) {
        let mut tx = store.begin_append().await.unwrap();
        tx.insert(chunk).await.unwrap();
        tx.commit().await.unwrap();
    }
    let insert_t = t.elapsed();
    store.close().await;

    println!("## Stage cost per event, one core, {STAGE_EVENTS} events\n");
    println!("| stage | per event |\n|---|---|");
    println!(
        "| seal (AES-256-GCM, {} B of data) | {} |",
        data.len(),
        per_event(seal_t, STAGE_EVENTS)
    );
    println!(
        "| hash (SHA-256 chain) | {} |",
        per_event(hash_t, STAGE_EVENTS)
    );
    println!("| sign (Ed25519) | {} |", per_event(sign_t, STAGE_EVENTS));
    println!(
        "| insert + durable commit (1000-row transactions) | {} |\n",
        per_event(insert_t, STAGE_EVENTS)
    );
}

struct Cell {
    events_per_request: usize,
    concurrency: usize,
    events_per_sec: f64,
    p50: Duration,
    p99: Duration,
    requests: usize,
}

async fn drive(bases: &[String], events_per_request: usize, concurrency: usize, secs: u64) -> Cell {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        let client = client.clone();
        let base = &bases[c % bases.len()];
        let url = format!("{base}/v1/streams/bench-{events_per_request}-{concurrency}-{c}/events");
        tasks.push(tokio::spawn(async move {
            let events: Vec<_> = (0..events_per_request)
                .map(|i| event(c * events_per_request + i))
                .collect();
            let body = serde_json::to_vec(&json!({"events": events})).unwrap();
            let mut lat = Vec::new();
            while Instant::now() < stop {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                let _ = r.bytes().await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let started = Instant::now();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Cell {
        events_per_request,
        concurrency,
        events_per_sec: (lat.len() * events_per_request) as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        requests: lat.len(),
    }
}

/// Whether `BENCH_EVENT=1k`: the ~1 KB event of benches/throughput.sh instead of the 64-byte
/// one this benchmark has always sent.
fn large_events() -> bool {
    std::env::var("BENCH_EVENT").is_ok_and(|v| v == "1k")
}

/// The `n`th event: with `BENCH_EVENT=1k`, benches/scripts/event_1k.json (900 bytes of JSON)
/// with an `n` member, a subject from a pool of 1,000 and two metadata pairs, as
/// benches/scripts/append.lua sends; otherwise the 64-byte event (no subject, one pair).
fn event(n: usize) -> serde_json::Value {
    if large_events() {
        let mut data: serde_json::Value =
            serde_json::from_str(include_str!("scripts/event_1k.json")).unwrap();
        data["n"] = json!(n);
        json!({"type": "PaymentCaptured", "subject": format!("customer-{:04}", (n * 31) % 1000),
               "data": data, "metadata": {"source": "bench-gateway", "request_id": format!("r{n}")}})
    } else {
        json!({"type": "PaymentInitiated", "data": {"amount": n, "currency": "EUR", "iban": "DE89370400440532013000"}, "metadata": {"source": "bench"}})
    }
}

fn main() {
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "# auditledger append benchmark\n\nmachine: {} cores, {}\n",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned())
            )
            .unwrap_or_default()
    );
    client_rt.block_on(stages());

    let dir = tempfile::tempdir().unwrap();
    let admin = std::env::var("BENCH_POSTGRES").ok();
    let instances: usize = std::env::var("BENCH_INSTANCES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let database_url = admin.as_ref().map(|a| {
        let name = format!("al_bench_{}", std::process::id());
        client_rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(a).await.unwrap();
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut c)
                .await
                .unwrap();
        });
        (format!("{}/{name}", a.rsplit_once('/').unwrap().0), name)
    });
    let mut config = ServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("data"),
        dir.path().join("keys"),
    );
    config.dirs.database_url = database_url.as_ref().map(|(u, _)| u.clone());
    // The append path is measured; the token check is one indexed read per request.
    config.insecure_no_auth = true;
    let services: Vec<Service> = (0..instances.max(1))
        .map(|_| server_rt.block_on(Service::start(&config)).unwrap())
        .collect();
    let bases: Vec<String> = services
        .iter()
        .map(|s| format!("http://{}", s.addr))
        .collect();
    let apps: Vec<_> = services.iter().map(|s| Arc::clone(&s.app)).collect();
    let backend = if admin.is_some() {
        "PostgreSQL, synchronous_commit=on"
    } else {
        "SQLite, synchronous=FULL"
    };

    if large_events() {
        // The subject pool exists before the clock starts (a subject's key is made on its
        // first use), as in benches/throughput.sh.
        let subjects: Vec<_> = (0..1000)
            .map(|i| json!({"type": "SubjectSeen", "subject": format!("customer-{i:04}"), "data": {"seen": true}}))
            .collect();
        let url = format!("{}/v1/streams/warmup/events", bases[0]);
        client_rt.block_on(async {
            let r = reqwest::Client::new()
                .post(url)
                .json(&json!({ "events": subjects }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        });
    }
    let size = if large_events() {
        "~1 KB events (900 bytes of data, a subject from a pool of 1,000)"
    } else {
        "64-byte events"
    };
    println!(
        "## End to end over HTTP, {backend}, {} instance(s), {size}, {secs} s per cell\n",
        services.len()
    );
    println!(
        "| events/request | clients | events/s | p50 | p99 | requests | mean batch | writer µs/event: seal / hash / sign / insert+commit |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &(epr, conc) in &[(1, 1), (1, 8), (1, 64), (100, 1), (100, 8), (100, 64)] {
        let totals = || {
            let mut t = [0u64; 6];
            for app in &apps {
                let s = app.ledger.stats();
                for (slot, a) in t.iter_mut().zip([
                    &s.entries,
                    &s.batches,
                    &s.seal_ns,
                    &s.hash_ns,
                    &s.sign_ns,
                    &s.insert_ns,
                ]) {
                    *slot += a.load(Ordering::Relaxed);
                }
            }
            t
        };
        let before = totals();
        let cell = client_rt.block_on(drive(&bases, epr, conc, secs));
        let after = totals();
        let d: Vec<f64> = before
            .iter()
            .zip(after)
            .map(|(b, a)| (a - b) as f64)
            .collect();
        let us = |ns: f64| ns / d[0].max(1.0) / 1000.0;
        println!(
            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {} | {:.1} | {:.2} / {:.2} / {:.2} / {:.2} |",
            cell.events_per_request,
            cell.concurrency,
            cell.events_per_sec,
            cell.p50.as_secs_f64() * 1e3,
            cell.p99.as_secs_f64() * 1e3,
            cell.requests,
            d[0] / d[1].max(1.0),
            us(d[2]),
            us(d[3]),
            us(d[4]),
            us(d[5]),
        );
    }
    for service in services {
        server_rt.block_on(service.stop()).unwrap();
    }
    if let (Some(admin), Some((_, name))) = (admin, database_url) {
        client_rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut c)
                .await
                .unwrap();
        });
    }
}
